"""The training loop of every simdist trainer: one run directory, one resume, one history.

A trainer (train-expert, distill, finetune, and the ones to come) supplies a `Stage`: its
update step, its evaluation (a history row), its checkpoint state and, when done, its final
report. `run` does the rest, the same way for all of them:

- refuses a run directory of another robot or config (`prepare_run_dir`, one line);
- resumes from the newest checkpoint, and first reconciles the directory with it: snapshots
  of later steps, history lines of later steps (and a line torn by a kill) and orbax's
  temporary folders are removed, so a rerun writes them again, identically, whatever the
  moment the previous process died;
- evaluates every `eval_every` steps and at the end (and at step 0 of a fresh run when asked),
  appending one line per evaluation to history.jsonl;
- saves snapshots at the chosen steps, then a checkpoint every `checkpoint_every` steps and at
  the end of the invocation (`stop_after` ends it early); the checkpoint's metadata carries the
  training metrics since the last evaluation, so a resumed run's history equals an
  uninterrupted one's;
- stops with a one-line `TrainingDivergedError` naming the last good checkpoint when a
  metric is not finite (checked before anything of that step is written);
- shows a progress bar with the stage's live fields, and writes metrics.json atomically after
  the stage's final artifacts, as the last file of a finished run.

Deterministic kill points for tests: `fail_at(point, step)` is called at each of `FAIL_POINTS`;
the environment variable ``SIMDIST_FAIL_AT=point:step`` (read here only) makes the process exit
at once (`os._exit(137)`, like a SIGKILL) at that point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from simdist.atomic import write_json, write_text
from simdist.checkpointing import Checkpoints
from simdist.config import read_json
from simdist.errors import CheckpointError, ConfigError, TrainingDivergedError, short_reason
from simdist.progress import console, progress_bar

FAIL_POINTS = ("after_step", "after_history", "after_snapshot", "after_checkpoint", "before_final", "before_metrics")
FailAt = Callable[[str, int], None]
_ORBAX_TMP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


class InjectedFailure(BaseException):
    """A deterministic kill raised by a test's `fail_at`; like SIGKILL, nothing catches it."""


def fail_at_from_env(var: str = "SIMDIST_FAIL_AT") -> FailAt | None:
    """`fail_at` from ``SIMDIST_FAIL_AT=point:step``: exit the process at once at that point."""
    spec = os.environ.get(var)
    if not spec:
        return None
    point, _, step = spec.rpartition(":")
    if point not in FAIL_POINTS or not step.isdigit():
        raise ConfigError(f"{var}={spec!r}: expected POINT:STEP with POINT one of {', '.join(FAIL_POINTS)}")

    def fail(p: str, s: int) -> None:
        if p == point and s == int(step):
            os._exit(137)

    return fail


# ---- the run directory -------------------------------------------------------------------


def _robot_of(cfg: Any) -> str | None:
    if isinstance(cfg, dict):
        if isinstance(cfg.get("robot"), str):
            return cfg["robot"]
        return next((r for v in cfg.values() if (r := _robot_of(v))), None)
    return None


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    return path or "config"


def prepare_run_dir(out: Path, config: dict[str, Any], what: str,
                    read: Callable[[Path], dict[str, Any]] = read_json) -> None:
    """Write `config` to OUT/config.json for a fresh run; for an existing one, check that it
    holds this robot and this config (`read` parses the stored file). One line otherwise."""
    path = out / "config.json"
    if path.exists():
        have = read(path)
        robot, stored_robot = _robot_of(config), _robot_of(have)
        if robot != stored_robot:
            raise CheckpointError(f"{out} holds a {what} run for robot '{stored_robot}', not '{robot}'; "
                                  "choose another --out")
        if have != config:
            raise CheckpointError(f"{out} holds a {what} run with another config ({_first_difference(have, config)}"
                                  " differs); resume it with the same options or choose another --out")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the run directory ({short_reason(e)})") from None
    write_json(path, config)


def _read_history(path: Path, key: str, upto: int) -> list[dict[str, Any]]:
    """The history rows with `key` <= `upto`, without a line torn by a kill; the file is
    rewritten (atomically) to hold just those."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get(key, 0) <= upto:
                rows.append(row)
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _remove_orbax_tmp(directory: Path) -> None:
    if directory.is_dir():
        for p in directory.iterdir():
            if _ORBAX_TMP.match(p.name):
                shutil.rmtree(p, ignore_errors=True)


def _remove_steps_after(directory: Path, step: int) -> None:
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.isdigit() and int(p.name) > step:
                shutil.rmtree(p)


# ---- the loop ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    out: Path
    title: str  # the progress bar's label, and the start of the divergence message
    kind: str  # what the checkpoints hold (checked on resume)
    config: dict[str, Any]  # the trainer's config as a dict (stored in, and checked against, checkpoints)
    total: int  # steps of the whole run
    checkpoint_every: int
    eval_every: int = 1
    eval_at_start: bool = False  # evaluate the untrained state (step 0) on a fresh run
    step_key: str = "step"  # the step's name in history lines and checkpoint metadata
    meta: Mapping[str, Any] = field(default_factory=dict)  # more checkpoint metadata (robot, ...)
    snapshot_steps: frozenset[int] = frozenset()  # steps saved under OUT/snapshots (0: before training)
    max_to_keep: int = 2
    diverged_hint: str = ""  # appended to the divergence message


class Stage:
    """What a trainer supplies to `run`. Metrics are pytrees of scalars (arrays on device are
    fetched only at evaluation, snapshot and checkpoint steps)."""

    def state(self) -> Any:
        """The resumable state, a pytree for the checkpoint."""
        raise NotImplementedError

    def load(self, state: Any, history: list[dict[str, Any]]) -> None:
        """Resume from a checkpoint's state; `history` holds the rows up to its step."""
        raise NotImplementedError

    def step(self, step: int) -> Mapping[str, Any]:
        """One update (steps count from 1); returns its metrics."""
        raise NotImplementedError

    def evaluate(self, step: int, metrics: list[dict[str, float]]) -> tuple[dict[str, Any], dict[str, str]]:
        """(a history row, progress fields) at an evaluation step; `metrics` are the steps'
        metrics since the last evaluation (none at step 0)."""
        raise NotImplementedError

    def snapshot(self, step: int) -> tuple[Any, dict[str, Any]]:
        """(state, metadata) of a snapshot, for a stage with `snapshot_steps`."""
        raise NotImplementedError

    def finish(self, result: LoopResult) -> dict[str, Any]:
        """The final report (written to metrics.json after this returns) and artifacts."""
        raise NotImplementedError


@dataclass
class LoopResult:
    started_at: int  # the step this invocation resumed from (0 for a fresh run)
    reached: int  # the step reached
    history: list[dict[str, Any]]
    seconds: float  # training time of this invocation
    steps_done: int  # steps this invocation ran
    metrics: dict[str, Any] | None = None  # the final report; None when stopped early


def _finite(metrics: list[Any]) -> bool:
    return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(metrics))


def run(spec: RunSpec, stage: Stage, *, show_progress: bool = True, stop_after: int | None = None,
        fail_at: FailAt | None = None) -> LoopResult:
    """Train `stage` in `spec.out` (prepared with `prepare_run_dir`) until `spec.total` steps,
    or `stop_after` steps of this invocation; then, for a finished run, its final report."""
    out, key = Path(spec.out), spec.step_key
    fail = fail_at or fail_at_from_env() or (lambda point, step: None)
    for d in (out / "checkpoints", out / "snapshots"):
        _remove_orbax_tmp(d)
    ckpts = Checkpoints(out / "checkpoints", max_to_keep=spec.max_to_keep)
    start = ckpts.latest_step() or 0
    window: list[dict[str, float]] = []  # host metrics since the last evaluation
    if start:
        meta = ckpts.meta(start)
        if meta.get("kind") != spec.kind or meta.get("config") != spec.config:
            raise CheckpointError(f"{out}/checkpoints/{start} does not belong to this run's config")
        state = ckpts.restore(start, stage.state())
        window = list(meta.get("window", []))
    history = _read_history(out / "history.jsonl", key, start)
    if start:
        stage.load(state, history)
        if start >= spec.total:
            console.print(f"{out} is already fully trained ({start} {key}s)")
        else:
            console.print(f"resuming {spec.title} from {key} {start} of {spec.total}")
    snaps = None
    if spec.snapshot_steps:
        _remove_steps_after(out / "snapshots", start)  # written after the newest checkpoint: redone
        snaps = Checkpoints(out / "snapshots")

    def save_snapshot(step: int) -> None:
        state, meta = stage.snapshot(step)
        snaps.save(step, state, meta)
        fail("after_snapshot", step)

    def log(step: int, row: dict[str, Any]) -> None:
        history.append(row)
        with (out / "history.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")
        fail("after_history", step)

    if start == 0 and 0 in spec.snapshot_steps and 0 not in snaps.steps():
        save_snapshot(0)
    fields: dict[str, str] = {}
    if start == 0 and spec.eval_at_start and not history:
        row, fields = stage.evaluate(0, [])
        log(0, row)
    end = spec.total if stop_after is None else min(spec.total, start + stop_after)
    pending: list[Mapping[str, Any]] = []  # metrics not yet fetched and checked
    t0 = time.perf_counter()
    with progress_bar(spec.title, spec.total, show_progress) as update:
        update(advance=start)
        for step in range(start + 1, end + 1):
            pending.append(stage.step(step))
            fail("after_step", step)
            is_eval = step % spec.eval_every == 0 or step == end
            is_ckpt = step % spec.checkpoint_every == 0 or step == end
            is_snap = step in spec.snapshot_steps
            if is_eval or is_ckpt or is_snap:
                fetched = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
                pending = []
                if not _finite(fetched):
                    raise TrainingDivergedError(
                        f"{spec.title} diverged (non-finite loss) by {key} {step}; the last good checkpoint "
                        f"({key} {ckpts.latest_step() or 0}) is kept in {out}/checkpoints{spec.diverged_hint}")
                window += fetched
            if is_eval:
                row, fields = stage.evaluate(step, window)
                window = []
                log(step, row)
            if is_snap:
                save_snapshot(step)
            if is_ckpt:
                meta = {**spec.meta, "kind": spec.kind, "config": spec.config, key: step, "window": window}
                ckpts.save(step, stage.state(), meta)
                fail("after_checkpoint", step)
            update(advance=1, **fields)
    result = LoopResult(start, max(start, end), history, time.perf_counter() - t0, max(0, end - start))
    ckpts.close()
    if snaps is not None:
        snaps.close()
    if result.reached < spec.total:
        return result
    fail("before_final", spec.total)
    metrics = stage.finish(result)
    fail("before_metrics", spec.total)
    write_json(out / "metrics.json", metrics)
    result.metrics = metrics
    return result
