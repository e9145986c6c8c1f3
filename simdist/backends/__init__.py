"""Robot backends: the interface the deploy loop drives, and the robots behind it.

- `RobotInterface` / `RobotSpec` (base.py): connect, reset, observe, command, act, step,
  stop, close, done, stats; a context manager that stops and closes on exit.
- `sim-real` (sim_real.py): classic CPU MuJoCo with a reality gap (gaps.py and the robot's
  gap keys and `apply_gap`), in lock-step or real-time mode, through the robot's
  `sim_real_adapter`.
- `dummy` (base.py `DummyRobot`): a double integrator with the robot's spec, for tests.
"""

from __future__ import annotations

from simdist.backends.base import DummyRobot, RobotInterface, RobotSpec
from simdist.backends.gaps import (
    GENERIC_KEYS,
    GapKey,
    describe_gap,
    describe_gaps,
    full_gap,
    gap_keys,
    parse_gap,
    resolve_gap,
    robot_gaps,
)
from simdist.backends.sim_real import MODES, SimRealProbe, SimRealRobot
from simdist.errors import RobotError

BACKENDS = ("sim-real", "dummy")


def make_backend(
    name: str,
    robot,
    gap=None,
    mode: str = "lock-step",
    seed: int = 0,
    **kwargs,
) -> RobotInterface:
    """A robot backend by name, not yet connected (use it as a context manager).

    `robot` is a `Robot` or a robot name; `gap` a gap spec for `parse_gap` (a name,
    `key=value,...`, `NAME,key=value`, a JSON path or a dict; None is no gap); `mode` one of
    `MODES`. `kwargs` go to the backend (sim-real: `env_config`, `clock`, `sleep`).
    """
    if isinstance(robot, str):
        from simdist.robot import get_robot

        robot = get_robot(robot)
    if name == "sim-real":
        return SimRealRobot(robot, gap, mode=mode, seed=seed, **kwargs)
    if name == "dummy":
        if mode != "lock-step":
            raise RobotError(f"the dummy backend runs in lock-step mode only, not '{mode}'")
        parsed = parse_gap(gap, {"none": {}}, set(GENERIC_KEYS), robot=f"{robot.name} (dummy backend)")
        if parsed.get("latency", 0):
            raise RobotError("the dummy backend has no latency; give it obs_noise only")
        task = robot.make_task(kwargs.pop("env_config", None))
        spec = RobotSpec(
            robot=robot.name,
            control_dt=float(task.config.ctrl_dt),
            action_size=int(task.action_size),
            action_low=-1.0,
            action_high=1.0,
            obs_names=tuple(task.deployable_obs_names),
            obs_size=len(task.deployable_obs_names),
            command_size=int(task.command_size),
        )
        return DummyRobot(spec, obs_noise=parsed.get("obs_noise", 0.0), seed=seed, **kwargs)
    raise RobotError(f"unknown robot backend '{name}'; backends: {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "DummyRobot",
    "GENERIC_KEYS",
    "GapKey",
    "MODES",
    "RobotInterface",
    "RobotSpec",
    "SimRealProbe",
    "SimRealRobot",
    "describe_gap",
    "describe_gaps",
    "full_gap",
    "gap_keys",
    "make_backend",
    "parse_gap",
    "resolve_gap",
    "robot_gaps",
]
