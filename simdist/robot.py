"""The robot contract: what a robot supplies to every stage, and the registry of robots.

A robot is a package that builds one `Robot` and calls `register_robot(robot)` when it is
imported. The robots shipped with simdist are the packages under `simdist.robots` (the
`robots/` folder); they are found by listing that package (`pkgutil.iter_modules`), and each is
imported only when it is first asked for. A robot defined elsewhere (a test's tiny robot, a
user's own) registers itself the same way once its module is imported. The library never
imports a specific robot: everything robot-specific (task, randomisation, gaps, presets of
every stage, the sim-real adapter, pretrained artifacts) is reached through the `Robot`.
See robots/README.md.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Callable, Mapping

from simdist.errors import ConfigError, UnknownRobotError

PRESETS = ("tiny", "default", "paper")
ROBOTS_PACKAGE = "simdist.robots"


@dataclasses.dataclass(frozen=True)
class Robot:
    """Everything simdist needs from one robot.

    Presets are `name -> factory(seed)` (expert, data, distill, finetune) or `name -> config`
    (mppi, the deploy planner). Stages a robot leaves without presets use the library's
    generic ones (finetune, mppi); expert, data and distill presets are required by the
    stages that use them.
    """

    name: str
    description: str
    task_cls: type
    env_config_cls: type
    # preset name -> ExpertConfig factory (seed as argument)
    expert_presets: dict[str, Callable[[int], Any]]
    # Named reality gaps (name -> key -> value); "none" is added when absent.
    gaps: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # preset name -> GenerateConfig factory (Stage 2) and DistillConfig factory (Stage 3)
    data_presets: dict[str, Callable[[int], Any]] = dataclasses.field(default_factory=dict)
    distill_presets: dict[str, Callable[[int], Any]] = dataclasses.field(default_factory=dict)
    # preset name -> FinetuneConfig factory (Stage 4); empty: the library's generic presets
    finetune_presets: dict[str, Callable[[int], Any]] = dataclasses.field(default_factory=dict)
    # preset name -> MPPIConfig (deploy's planner); empty: the library's generic presets
    mppi_presets: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The reality gap's physical keys (name -> simdist.backends.gaps.GapKey), one line of why
    # per named gap, and `apply_gap(mj_model, physical_gap)` that applies them in place.
    gap_keys: dict[str, Any] = dataclasses.field(default_factory=dict)
    gap_notes: dict[str, str] = dataclasses.field(default_factory=dict)
    apply_gap: Callable[[Any, Mapping[str, float]], None] | None = None
    # How the random-gap battery moves each gap key out of training (simdist.backends.battery.Shift)
    battery: tuple[Any, ...] = ()
    # The `sim-real` backend's adapter class (a simdist.backends.sim_real.SimRealAdapter
    # subclass taking (robot, env_config)); None: the robot has no sim-real backend.
    sim_real_adapter: type | None = None
    # The robot's folder; `pretrained(kind)` looks in <root>/pretrained/<kind>.
    root: Path | None = None

    def expert_config(self, preset: str, seed: int = 0):
        return self._preset(self.expert_presets, "expert", preset, seed)

    def data_config(self, preset: str, seed: int = 0):
        return self._preset(self.data_presets, "data", preset, seed)

    def distill_config(self, preset: str, seed: int = 0):
        return self._preset(self.distill_presets, "distill", preset, seed)

    def finetune_config(self, preset: str, seed: int = 0):
        """The robot's finetune preset, or None when the robot keeps the generic ones."""
        if not self.finetune_presets:
            return None
        return self._preset(self.finetune_presets, "finetune", preset, seed)

    def mppi_config(self, preset: str):
        """The robot's MPPI (deploy) preset, or None when the robot keeps the generic ones."""
        if not self.mppi_presets:
            return None
        if preset not in self.mppi_presets:
            raise ConfigError(
                f"robot '{self.name}' has no mppi preset '{preset}'; presets: {', '.join(self.mppi_presets)}"
            )
        return self.mppi_presets[preset]

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
        if self.root is None:
            return None
        path = Path(self.root) / "pretrained" / kind
        return path if path.is_dir() else None

    def make_task(self, env_config=None):
        return self.task_cls(env_config if env_config is not None else self.env_config_cls())


_REGISTRY: dict[str, Robot] = {}


def register_robot(robot: Robot) -> Robot:
    """Make `robot` known by its name (a robot package calls this when imported).

    Registering the same robot object again is a no-op; another robot under a taken name is an
    error (two robots would silently replace each other)."""
    if not isinstance(robot, Robot):
        raise TypeError(f"register_robot takes a Robot, not {type(robot).__name__}")
    old = _REGISTRY.get(robot.name)
    if old is not None and old is not robot:
        raise ConfigError(f"a robot named '{robot.name}' is already registered")
    _REGISTRY[robot.name] = robot
    return robot


def _packages() -> list[str]:
    """Names of the robot packages under `simdist.robots` (not imported)."""
    pkg = importlib.import_module(ROBOTS_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.ispkg and not m.name.startswith("_"))


def _load(package: str) -> None:
    mod = importlib.import_module(f"{ROBOTS_PACKAGE}.{package}")
    robot = getattr(mod, "ROBOT", None)
    if isinstance(robot, Robot) and robot.name not in _REGISTRY:
        register_robot(robot)


def robot_names() -> list[str]:
    """Every robot: the packages under `simdist.robots` (imported now), then the others
    registered so far."""
    shipped = []
    for package in _packages():
        _load(package)
        shipped += [n for n, r in _REGISTRY.items() if r.root is not None and Path(r.root).name == package]
    shipped = list(dict.fromkeys(shipped))
    return shipped + [n for n in _REGISTRY if n not in shipped]


def get_robot(name: str) -> Robot:
    """The robot called `name`; UnknownRobotError (one line, with the known names) otherwise."""
    if name not in _REGISTRY and name in _packages():
        _load(name)
    if name not in _REGISTRY:
        raise UnknownRobotError(f"unknown robot '{name}'; known robots: {', '.join(robot_names())}")
    return _REGISTRY[name]
