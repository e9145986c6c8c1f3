"""World-model directories: what `distill` and `finetune` write and `deploy` reads.

A model directory holds
  model.json   kind "world_model", robot, the WorldModelConfig, where it came from
               (dataset, parent model), and the normalisation statistics' source
  weights/     one orbax checkpoint of the whole nnx state: parameters and the dataset's
               normalisation statistics (non-trainable `Stats` variables), with the sha256
               digest of every array, verified on load (simdist.checkpointing)

Both are written atomically: the weights go to a temp directory renamed into place, and
model.json is written last, so a directory without model.json is not a model.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from flax import nnx

from simdist.checkpointing import Checkpoints
from simdist.config import read_json, to_dict, write_json
from simdist.errors import CheckpointError, ConfigError
from simdist.models.world_model import WorldModel, WorldModelConfig

MODEL_KIND = "world_model"


def save_model(directory: Path, model: WorldModel, meta: dict[str, Any]) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.json").unlink(missing_ok=True)
    tmp = directory / f"weights.tmp-{uuid.uuid4().hex[:8]}"
    with Checkpoints(tmp) as ckpt:  # records the weights' digest, checked by every load
        ckpt.save(0, {"state": nnx.to_pure_dict(nnx.state(model))}, {"kind": MODEL_KIND})
    final = directory / "weights"
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    write_json(directory / "model.json", dict(meta, kind=MODEL_KIND, model=to_dict(model.cfg)))


def read_model_meta(directory: Path, robot: str | None = None) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / "model.json"
    if not directory.is_dir():
        raise CheckpointError(f"model directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a world-model directory (no model.json; was distill interrupted?)")
    try:
        meta = read_json(path)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is corrupt ({type(e).__name__})") from None
    if meta.get("kind") != MODEL_KIND:
        raise CheckpointError(f"{directory} holds a '{meta.get('kind')}', not a world model")
    if robot is not None and meta.get("robot") != robot:
        raise CheckpointError(f"{directory} holds a world model for robot '{meta.get('robot')}', not '{robot}'")
    return meta


def load_model(directory: Path, robot: str | None = None) -> tuple[WorldModel, dict[str, Any]]:
    """(model, meta) of a model directory; one-line CheckpointError when it is unusable."""
    directory = Path(directory)
    meta = read_model_meta(directory, robot)
    try:
        cfg = WorldModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{directory}/model.json has an unusable model config ({e})") from None
    model = WorldModel(cfg, rngs=nnx.Rngs(0))
    template = {"state": nnx.to_pure_dict(nnx.state(model))}
    if not (directory / "weights").is_dir():
        raise CheckpointError(f"{directory} has no weights")
    with Checkpoints(directory / "weights", create=False) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise CheckpointError(f"{directory} has no weights")
        # Verified against the digest saved with the weights: a corrupt, truncated or missing
        # file is a one-line CheckpointError, never wrong numbers.
        restored = ckpt.restore(steps[-1], template)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, restored["state"])
    nnx.update(model, state)
    return model, meta
