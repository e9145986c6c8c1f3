"""Checkpoints through orbax: a pytree and a JSON metadata item per step, written atomically.

Orbax writes each step into a temporary folder and renames it when complete, so a killed
run never leaves a step that looks valid. Every simdist checkpoint stores, in its metadata,
the config it was trained with and a `kind` that says what it holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from simdist.errors import CheckpointError

logging.getLogger("absl").setLevel(logging.WARNING)


class Checkpoints:
    """A folder of numbered checkpoints, each with `state` (arrays) and `meta` (JSON)."""

    def __init__(self, directory: Path, max_to_keep: int | None = None, create: bool = True):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints at {self.directory}")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        state = jax.device_get(state)
        self._mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._mgr.wait_until_finished()

    def meta(self, step: int) -> dict[str, Any]:
        try:
            return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for a damaged folder
            raise CheckpointError(f"checkpoint {self.directory}/{step} is unreadable: {_short(e)}") from None

    def restore(self, step: int, template: Any) -> Any:
        """Restore `state` into the structure, shapes and dtypes of `template`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} does not match this model/config: {_short(e)}"
            ) from None
        return out["state"]

    def close(self) -> None:
        self._mgr.close()


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")
