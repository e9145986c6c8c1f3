"""Long work: rich progress bars with live metrics, and commits that a Ctrl-C cannot cut."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
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


@contextlib.contextmanager
def deferred_interrupt(reraise: bool = True) -> Iterator[dict]:
    """Postpone Ctrl-C (SIGINT) while the block runs, so that what it saves (an episode being
    appended, the partial episode of an interrupted run) is never cut in half.

    Yields a dict whose "interrupted" entry turns True when a Ctrl-C came during the block.
    When the block ends, such a Ctrl-C is raised as KeyboardInterrupt if `reraise`, else only
    recorded (for cleanup that already handles an interrupt). An exception from the block
    goes up unchanged. Outside the main thread (where signal handlers cannot be set) the
    block runs unprotected.
    """
    state = {"interrupted": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def note(signum, frame) -> None:
        state["interrupted"] = True

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, note)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if state["interrupted"] and reraise:
        raise KeyboardInterrupt
