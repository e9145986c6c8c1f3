"""Rich progress bars for long work, with live metrics."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator:
    """Yields `update(advance, **fields)`; fields are shown after the bar (e.g. return, steps/s)."""
    if not enabled:
        yield lambda advance=1, **fields: None
        return
    if not sys.stderr.isatty():
        # Logs (CI, pipes): a plain line at every tenth of the work instead of a live bar.
        state = {"done": 0, "next": 0}

        def log(advance: int = 1, **fields) -> None:
            state["done"] += advance
            if fields and (state["done"] >= state["next"] or state["done"] >= total):
                info = "  ".join(f"{k} {v.strip() if isinstance(v, str) else v}" for k, v in fields.items())
                console.print(f"{description}: {state['done']}/{total}  {info}", highlight=False)
                state["next"] = state["done"] + max(1, total // 10)

        yield log
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def update(advance: int = 1, **fields) -> None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=advance, info=info)

        yield update
