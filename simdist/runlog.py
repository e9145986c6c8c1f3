"""Run-directory helpers shared by the stages (the training loop itself is `simdist.training`)."""

from __future__ import annotations

from pathlib import Path

from simdist.atomic import write_with


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        write_with(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi))
    finally:
        plt.close(fig)
