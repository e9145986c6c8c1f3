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
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=not sys.stderr.isatty(),
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def update(advance: int = 1, **fields) -> None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=advance, info=info)

        yield update
