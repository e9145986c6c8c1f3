"""Evaluate a Stage 1 expert run in MJX: per snapshot, return, episode length, falls and, for
robots with a velocity command, forward-velocity tracking error and distance on a fixed command.

Writes the report to `<run>/eval.json` (or another path) atomically and formats it as a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from simdist.config import write_json
from simdist.errors import ConfigError
from simdist.paths import make_output_dir
from simdist.rl.evaluate import evaluate_expert


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    report: dict[str, Any]
    path: Path | None  # where the report was written, if it was


def parse_command(text: str | None) -> tuple[float, ...] | None:
    """'0.5,0,0' -> (0.5, 0.0, 0.0)."""
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--command takes comma-separated numbers such as 0.5,0,0, got '{text}'") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--command values must be finite, got '{text}'")
    return values


def eval_expert(
    run_dir: Path,
    robot: str | None = None,
    *,
    episodes: int = 10,
    command: Sequence[float] | None = None,
    snapshots: str | int | Sequence[int] = "last",
    seed: int = 0,
    randomize: bool = True,
    random_baseline: bool = False,
    env_overrides: dict[str, Any] | None = None,
    out: Path | None = None,
    save: bool = True,
) -> EvalResult:
    """Evaluate the run's snapshots (see `simdist.rl.evaluate.evaluate_expert`); write the
    report to `out` [default: `<run_dir>/eval.json`] unless `save` is False."""
    run_dir = Path(run_dir)
    rows = evaluate_expert(run_dir, robot, episodes=episodes, command=command, snapshots=snapshots, seed=seed,
                           randomize=randomize, random_baseline=random_baseline,
                           env_overrides=env_overrides)  # fmt: skip
    first = rows[0]
    report = {
        "run": str(run_dir),
        "robot": first["robot"],
        "episodes": first["episodes"],
        "episode_steps": first["episode_steps"],
        "seed": first["seed"],
        "randomize": first["randomize"],
        "command": first["command"],
        "env_overrides": first["env_overrides"],
        "snapshots": rows,
    }
    path = None
    if save:
        path = Path(out) if out is not None else run_dir / "eval.json"
        make_output_dir(path.parent, "--json")
        write_json(path, report)
    return EvalResult(rows, report, path)


def _name(row: dict[str, Any]) -> str:
    if row["policy"] == "random":
        return "random"
    return f"{row['iteration']} (expert)" if row["policy"] == "expert" else str(row["iteration"])


def format_table(report: dict[str, Any]) -> str:
    """The report as a text table, one line per snapshot, under a one-line header."""
    rows = report["snapshots"]
    n = report["episodes"]
    cmd = report["command"]
    head = f"{report['robot']} expert {report['run']}: {n} episodes of {report['episode_steps']} steps"
    if cmd is not None:
        head += ", fixed command (" + ", ".join(f"{c:g}" for c in cmd) + ")"
    head += ", domain randomisation" if report["randomize"] else ", nominal physics"
    if report.get("env_overrides"):
        head += ", " + ", ".join(f"{k}={v}" for k, v in report["env_overrides"].items())
    head += f", seed {report['seed']}"
    track = any("vx_mae" in r for r in rows)
    dist = any("distance_mean" in r for r in rows)
    cols = [f"{'snapshot':>14s}", f"{'return':>17s}", f"{'length':>7s}", f"{'falls':>7s}"]
    if track:
        cols.append(f"{'vx MAE m/s':>10s}")
    if dist:
        cols.append(f"{'distance m':>10s}")
    lines = [head, " | ".join(cols)]
    for r in rows:
        cells = [
            f"{_name(r):>14s}",
            f"{r['return_mean']:8.2f} ± {r['return_std']:6.2f}",
            f"{r['episode_length_mean']:7.1f}",
            f"{str(r['falls']) + '/' + str(n):>7s}",
        ]
        if track:
            cells.append(f"{r['vx_mae']:10.3f}" if "vx_mae" in r else f"{'-':>10s}")
        if dist:
            cells.append(f"{r['distance_mean']:10.2f}" if "distance_mean" in r else f"{'-':>10s}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)
