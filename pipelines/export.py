"""Export: a slim, self-contained copy of a trained expert and world model, to ship with the
package (robots/<robot>/pretrained) or to copy onto a robot's computer.

OUT/
  model/     model.json + weights/ of a distill (or finetune) output: the parameters and the
             dataset's normalisation statistics; no optimiser state, no training history
  expert/    config.json + metrics.json + snapshots/<final>/ of a train-expert run: the
             expert policy, its value function and observation normaliser
  export.json  where they came from, the robot, sizes, and when

The copy is built in a temporary folder, loaded back (both must load for the robot), and
renamed into place, so an interrupted export never leaves a half-written OUT.
"""

from __future__ import annotations

import datetime
import shutil
import uuid
from pathlib import Path
from typing import Any

from simdist.config import read_json, write_json
from simdist.errors import CheckpointError, short_reason
from simdist.paths import OutputPathError


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export(robot: str, out: Path, *, model_dir: Path | None = None, expert_dir: Path | None = None,
           overwrite: bool = False) -> dict[str, Any]:
    from simdist.models.io import load_model, read_model_meta
    from simdist.rl.policy import load_expert, load_snapshots

    if model_dir is None and expert_dir is None:
        raise CheckpointError("export needs a world model (--model), an expert run (--expert) or both")
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"{out} exists; pass --overwrite to replace it")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise OutputPathError(f"--out {out}: cannot create it ({short_reason(e, with_type=False)})") from None
    info: dict[str, Any] = {"robot": robot, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    try:
        if model_dir is not None:
            model_dir = Path(model_dir)
            read_model_meta(model_dir, robot)  # one-line error for a wrong or unfinished model
            dst = tmp / "model"
            dst.mkdir()
            shutil.copy2(model_dir / "model.json", dst / "model.json")
            shutil.copytree(model_dir / "weights", dst / "weights")
            if (model_dir / "metrics.json").is_file():
                shutil.copy2(model_dir / "metrics.json", dst / "metrics.json")
            model, _ = load_model(dst, robot)
            info["model"] = {"source": str(model_dir), "bytes": _size(dst), "config": read_json(dst / "model.json")["model"]}
        if expert_dir is not None:
            expert_dir = Path(expert_dir)
            snap = load_expert(expert_dir, robot)  # the final snapshot
            dst = tmp / "expert"
            (dst / "snapshots").mkdir(parents=True)
            shutil.copy2(expert_dir / "config.json", dst / "config.json")
            if (expert_dir / "metrics.json").is_file():
                shutil.copy2(expert_dir / "metrics.json", dst / "metrics.json")
            shutil.copytree(expert_dir / "snapshots" / str(snap.iteration), dst / "snapshots" / str(snap.iteration))
            [kept] = load_snapshots(dst, robot)
            if not kept.is_final:
                raise CheckpointError(f"{expert_dir}: the exported snapshot is not the final expert")
            info["expert"] = {"source": str(expert_dir), "iteration": snap.iteration, "bytes": _size(dst)}
        write_json(tmp / "export.json", info)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return info
