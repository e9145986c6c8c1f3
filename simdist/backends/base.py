"""The robot interface: what every backend implements and all that the deploy loop sees.

A backend is a robot you can only talk to the way you talk to hardware: connect, reset to the
start state, read the sensors, send an action, stop. `sim-real` (a classic MuJoCo simulator
with a reality gap) implements it; a hardware backend would wrap a real driver behind the same
methods. Nothing here exposes the true state, rewards or the physics model.

The public methods are implemented once, here, so that every backend gets the same safety
contract; a backend supplies the `_hooks`:

- `act` checks the shape, turns a non-finite action into a safe stop followed by
  `RobotError`, and clamps the action to `[spec.action_low, spec.action_high]`.
- `stop` is always callable and idempotent. It latches: after a stop the robot holds a zero
  action and ignores actions until the next `reset`. `done()` is true while stopped.
- `with backend:` connects on entry, and on exit stops then closes, also on exceptions.
- `stats` counts control steps, actions, clamped actions and missed deadlines.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Any

import numpy as np

from simdist.errors import RobotError


@dataclasses.dataclass(frozen=True, eq=False)
class RobotSpec:
    """What a planner needs to know about a robot, and nothing about its physics."""

    robot: str
    control_dt: float
    action_size: int
    action_low: np.ndarray
    action_high: np.ndarray
    obs_names: tuple[str, ...]
    obs_size: int
    command_size: int = 0

    def __post_init__(self):
        low = np.broadcast_to(np.asarray(self.action_low, np.float64), (self.action_size,)).copy()
        high = np.broadcast_to(np.asarray(self.action_high, np.float64), (self.action_size,)).copy()
        if not np.all(low <= high):
            raise RobotError(f"robot spec for {self.robot}: action_low must be <= action_high")
        low.flags.writeable = False
        high.flags.writeable = False
        object.__setattr__(self, "action_low", low)
        object.__setattr__(self, "action_high", high)
        object.__setattr__(self, "obs_names", tuple(self.obs_names))
        if len(self.obs_names) != self.obs_size:
            raise RobotError(
                f"robot spec for {self.robot}: {len(self.obs_names)} obs names for obs_size {self.obs_size}"
            )
        if not self.control_dt > 0:
            raise RobotError(f"robot spec for {self.robot}: control_dt must be > 0")

    def __eq__(self, other) -> bool:
        if not isinstance(other, RobotSpec):
            return NotImplemented
        return (
            self.robot == other.robot
            and self.control_dt == other.control_dt
            and self.action_size == other.action_size
            and np.array_equal(self.action_low, other.action_low)
            and np.array_equal(self.action_high, other.action_high)
            and self.obs_names == other.obs_names
            and self.obs_size == other.obs_size
            and self.command_size == other.command_size
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["action_low"] = self.action_low.tolist()
        d["action_high"] = self.action_high.tolist()
        d["obs_names"] = list(self.obs_names)
        return d


class RobotInterface(abc.ABC):
    """A robot, as the deploy loop sees it. See the module docstring for the contract."""

    spec: RobotSpec

    def __init__(self, spec: RobotSpec):
        self.spec = spec
        self._connected = False
        self._stopped = False
        self._stop_reason: str | None = None
        self._counters = {
            "control_steps": 0,  # control periods the robot went through since reset
            "actions": 0,  # actions accepted by act()
            "clamped_actions": 0,  # of which were outside the limits
            "ignored_actions": 0,  # actions sent while stopped
            "missed_deadlines": 0,  # real-time mode: actions that came after their control period
            "stale_ticks": 0,  # real-time mode: control periods run on a previous action
            "safety_stops": 0,
        }
        self._t_reset = time.monotonic()
        # Seconds the backend spent computing control periods (physics, sensors), not
        # waiting: backends add to it, `stats` turns it into control steps per second.
        self._compute_s = 0.0

    # ---- public API --------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            return
        self._connect()
        self._connected = True

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Bring the robot to its start state; returns the first observation."""
        self._require_connected("reset")
        self._stopped = False
        self._stop_reason = None
        for k in self._counters:
            if k != "safety_stops":
                self._counters[k] = 0
        self._compute_s = 0.0
        self._t_reset = time.monotonic()
        return self._checked_obs(self._reset(seed))

    def observe(self) -> np.ndarray:
        """The latest deployable observation, as the sensors give it (with their noise)."""
        self._require_connected("observe")
        return self._checked_obs(self._observe())

    def command(self) -> np.ndarray:
        """The current task command, shape `(spec.command_size,)`."""
        self._require_connected("command")
        return np.asarray(self._command(), np.float32).reshape(self.spec.command_size)

    def act(self, action) -> None:
        """Send an action. Clamped to the limits; a non-finite action stops the robot and raises."""
        self._require_connected("act")
        a = np.asarray(action, dtype=np.float64)
        if a.size != self.spec.action_size:
            raise RobotError(
                f"{self.spec.robot}: action has {a.size} entries, the robot takes {self.spec.action_size}"
            )
        a = a.reshape(self.spec.action_size)
        if not np.all(np.isfinite(a)):
            self.stop(reason="non-finite action")
            raise RobotError(
                f"{self.spec.robot}: non-finite action {a.tolist()} at control step "
                f"{self._counters['control_steps']}; robot stopped"
            )
        clamped = np.clip(a, self.spec.action_low, self.spec.action_high)
        if self._stopped:
            self._counters["ignored_actions"] += 1
            return
        self._counters["actions"] += 1
        if not np.array_equal(clamped, a):
            self._counters["clamped_actions"] += 1
        self._act(clamped)

    def step(self, action) -> np.ndarray:
        """`act(action)`, wait for the next control tick, then `observe()`."""
        self.act(action)
        self._wait_tick()
        return self.observe()

    def stop(self, reason: str = "stop requested") -> None:
        """Safe stop: zero action, held until the next reset. Always callable, idempotent."""
        if not self._connected or self._stopped:
            return
        self._stopped = True
        self._stop_reason = reason
        self._stop()

    def close(self) -> None:
        if not self._connected:
            return
        try:
            self.stop(reason="closed")
        finally:
            self._connected = False
            self._close()

    def done(self) -> bool:
        """True when the robot is stopped: a hard safety limit tripped, or `stop()` was called.

        Episode length is the caller's business; this is only the robot saying it cannot go on.
        """
        if not self._connected:
            return True
        if not self._stopped:
            reason = self._safety_fault()
            if reason is not None:
                self._counters["safety_stops"] += 1
                self.stop(reason=f"safety limit: {reason}")
        return self._stopped

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self._counters)
        s["elapsed_s"] = time.monotonic() - self._t_reset
        s["compute_s"] = self._compute_s
        s["control_steps_per_s"] = (
            self._counters["control_steps"] / self._compute_s if self._compute_s > 0 else float("nan")
        )
        s["stopped"] = self._stopped
        s["stop_reason"] = self._stop_reason
        s.update(self._extra_stats())
        return s

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.stop(reason="exception" if exc_type is not None else "context exit")
        finally:
            self.close()
        return False

    # ---- helpers -----------------------------------------------------------------------
    def _require_connected(self, what: str) -> None:
        if not self._connected:
            raise RobotError(f"{self.spec.robot}: {what}() on a robot that is not connected; call connect() first")

    def _checked_obs(self, obs) -> np.ndarray:
        o = np.asarray(obs, np.float32).reshape(-1)
        if o.size != self.spec.obs_size:
            raise RobotError(f"{self.spec.robot}: backend gave {o.size} observations, spec says {self.spec.obs_size}")
        return o

    # ---- hooks for backends ------------------------------------------------------------
    @abc.abstractmethod
    def _connect(self) -> None: ...

    @abc.abstractmethod
    def _reset(self, seed: int | None) -> np.ndarray: ...

    @abc.abstractmethod
    def _observe(self) -> np.ndarray: ...

    @abc.abstractmethod
    def _act(self, action: np.ndarray) -> None:
        """Send a checked, clamped action."""

    @abc.abstractmethod
    def _wait_tick(self) -> None:
        """Return at the next control tick (lock-step: advance the robot one control period)."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Command a zero action / hold, now."""

    def _close(self) -> None:
        pass

    def _command(self) -> np.ndarray:
        return np.zeros((self.spec.command_size,), np.float32)

    def _safety_fault(self) -> str | None:
        """A reason string when a hard safety limit is hit, else None."""
        return None

    def _extra_stats(self) -> dict[str, Any]:
        return {}


class DummyRobot(RobotInterface):
    """A double integrator behind the robot interface, for tests of code that drives robots.

    State: position p and velocity v, one of each per action entry; the action is the
    acceleration. Each control period: v += a * dt, p += v * dt (semi-implicit Euler). The
    observation is [p, v] cut or zero-padded to `spec.obs_size`, plus optional Gaussian noise.
    Lock-step only. `done()` trips when |p| exceeds `position_limit`.
    """

    def __init__(
        self,
        spec: RobotSpec | None = None,
        *,
        action_size: int = 1,
        control_dt: float = 0.02,
        obs_noise: float = 0.0,
        position_limit: float = np.inf,
        init_noise: float = 0.0,
        seed: int = 0,
    ):
        if spec is None:
            spec = RobotSpec(
                robot="dummy",
                control_dt=control_dt,
                action_size=action_size,
                action_low=-np.ones(action_size),
                action_high=np.ones(action_size),
                obs_names=tuple(f"pos_{i}" for i in range(action_size)) + tuple(f"vel_{i}" for i in range(action_size)),
                obs_size=2 * action_size,
            )
        super().__init__(spec)
        self.obs_noise = float(obs_noise)
        self.position_limit = float(position_limit)
        self.init_noise = float(init_noise)
        self._seed = int(seed)
        n = spec.action_size
        self.pos = np.zeros(n)
        self.vel = np.zeros(n)
        self._held = np.zeros(n)
        self._rng = np.random.default_rng(self._seed)
        self._obs = np.zeros(spec.obs_size, np.float32)
        self.sim_time = 0.0

    def _connect(self) -> None:
        pass

    def _true_obs(self) -> np.ndarray:
        full = np.concatenate([self.pos, self.vel])
        out = np.zeros(self.spec.obs_size)
        k = min(full.size, out.size)
        out[:k] = full[:k]
        return out

    def _sense(self) -> None:
        o = self._true_obs()
        if self.obs_noise > 0:
            o = o + self._rng.normal(0.0, self.obs_noise, o.shape)
        self._obs = o.astype(np.float32)

    def _reset(self, seed):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        n = self.spec.action_size
        self.pos = self.init_noise * self._rng.standard_normal(n)
        self.vel = self.init_noise * self._rng.standard_normal(n)
        self._held = np.zeros(n)
        self.sim_time = 0.0
        self._sense()
        return self._obs

    def _observe(self):
        return self._obs

    def _act(self, action):
        self._held = action.copy()

    def _wait_tick(self):
        dt = self.spec.control_dt
        self.vel = self.vel + self._held * dt
        self.pos = self.pos + self.vel * dt
        self.sim_time += dt
        self._counters["control_steps"] += 1
        self._sense()

    def _stop(self):
        self._held = np.zeros(self.spec.action_size)

    def _safety_fault(self):
        if not (np.all(np.isfinite(self.pos)) and np.all(np.isfinite(self.vel))):
            return "non-finite state"
        if np.any(np.abs(self.pos) > self.position_limit):
            return f"position beyond {self.position_limit}"
        return None

    def _extra_stats(self):
        return {"sim_time_s": self.sim_time}
