"""Run-directory helpers shared by the training stages: history lines, resume, figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simdist.checkpointing import Checkpoints
from simdist.errors import CheckpointError


def truncate_history(path: Path, upto: int, key: str = "step") -> list[dict[str, Any]]:
    """Keep the history lines with `key` <= `upto` (a resumed run rewrites what follows) and
    drop a line cut short by a kill. Returns the kept rows."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get(key, 0) <= upto:
                rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def append_history(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def latest_train_state(ckpts: Checkpoints, kind: str, config: dict[str, Any], template: Any, where: Path):
    """(step, state) of the newest resumable checkpoint, after checking that it belongs to a
    run of this kind and config; (0, None) for a fresh run."""
    step = ckpts.latest_step() or 0
    if not step:
        return 0, None
    meta = ckpts.meta(step)
    if meta.get("kind") != kind or meta.get("config") != config:
        raise CheckpointError(f"{where}/{step} does not belong to this run's config")
    return step, ckpts.restore(step, template)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
