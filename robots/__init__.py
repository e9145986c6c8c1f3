"""The robots simdist knows: one folder each, with MJCF, task, randomisation and presets."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Callable

from simdist.errors import ConfigError, UnknownRobotError

# name -> module that defines ROBOT. Modules are imported on first use.
_MODULES = {
    "cartpole": "simdist.robots.cartpole",
    "quadruped": "simdist.robots.quadruped",
}

PRESETS = ("tiny", "default", "paper")


@dataclasses.dataclass(frozen=True)
class Robot:
    name: str
    description: str
    task_cls: type
    env_config_cls: type
    # preset name -> ExpertConfig factory (seed as argument)
    expert_presets: dict[str, Callable[[int], object]]
    gaps: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # preset name -> GenerateConfig factory (Stage 2) and DistillConfig factory (Stage 3)
    data_presets: dict[str, Callable[[int], object]] = dataclasses.field(default_factory=dict)
    distill_presets: dict[str, Callable[[int], object]] = dataclasses.field(default_factory=dict)

    def expert_config(self, preset: str, seed: int = 0):
        if preset not in self.expert_presets:
            raise ConfigError(
                f"robot '{self.name}' has no preset '{preset}'; presets: {', '.join(self.expert_presets)}"
            )
        return self.expert_presets[preset](seed)

    def data_config(self, preset: str, seed: int = 0):
        return self._preset(self.data_presets, "data", preset, seed)

    def distill_config(self, preset: str, seed: int = 0):
        return self._preset(self.distill_presets, "distill", preset, seed)

    def _preset(self, presets, stage: str, preset: str, seed: int):
        if preset not in presets:
            raise ConfigError(
                f"robot '{self.name}' has no {stage} preset '{preset}'; presets: {', '.join(presets) or 'none'}"
            )
        return presets[preset](seed)

    def pretrained(self, kind: str) -> Path | None:
        """The artifact this robot ships with the package, or None: `kind` is "model" (a
        distilled world model, with its dataset's normalisation statistics) or "expert" (a
        train-expert run holding the final policy snapshot). See docs/quadruped.md."""
        path = Path(importlib.import_module(_MODULES[self.name]).__file__).parent / "pretrained" / kind
        return path if path.is_dir() else None

    def make_task(self, env_config=None):
        return self.task_cls(env_config if env_config is not None else self.env_config_cls())


def robot_names() -> list[str]:
    return list(_MODULES)


def get_robot(name: str) -> Robot:
    if name not in _MODULES:
        raise UnknownRobotError(f"unknown robot '{name}'; known robots: {', '.join(_MODULES)}")
    return importlib.import_module(_MODULES[name]).ROBOT
