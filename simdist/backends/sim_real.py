"""`sim-real`: the "real" robot is a classic CPU MuJoCo simulator with a reality gap.

It is driven only through `RobotInterface`, as hardware would be. It loads the robot's MJCF
with `mujoco.MjModel` (not MJX), applies the gap (physical keys through the robot's
`apply_gap`, plus actuation latency and sensor noise), maps actions to actuator controls as
the task does, runs round(ctrl_dt / timestep) physics steps per control step, starts episodes
from the task's initial-state distribution (seeded), and computes the deployable observation
with a numpy copy of the task's formula (tests check it against the MJX task to 1e-5).

Latency: a FIFO of `latency` actions, initialised with zeros at reset. At every control tick
the currently commanded action goes in and the action sent `latency` ticks ago comes out and
drives the motor. A safe stop flushes the FIFO (the drive is disabled, nothing in flight).

Sensor noise: Gaussian, std `obs_noise`, drawn once per control tick (reading the sensors
twice within a tick gives the same reading), from a stream seeded separately from the initial
state, so the same seed gives the same start state with or without noise.

Modes
- `lock-step`: the simulator waits for the planner. `step(a)` advances exactly one control
  period with `a`; no deadline can be missed.
- `real-time`: the simulator follows a monotonic clock from `reset()` on: control tick k
  spans wall time [t0 + k dt, t0 + (k+1) dt). There is no background thread; the simulator
  catches up on every call (`act`, `step`, `observe`), integrating every tick whose end has
  passed, with whatever action the robot held then. So the robot keeps moving while the
  planner thinks, exactly as if a thread had stepped it. An action computed from the
  observation of tick j is on time if it arrives before t0 + (j+1) dt: it then drives tick j
  (compute time within the budget is treated as free, as in lock-step; model a systematic
  actuation delay with the `latency` gap key). An action that arrives later counts one missed
  deadline; the ticks that passed ran on the previous action (`stale_ticks`), and the new
  action drives the current tick. `step()` then sleeps until the current tick ends and
  returns its observation, so after a fast caller's `step` the simulated time equals the
  wall time since reset to within one tick.

Episode ends are the caller's business (episode length); `done()` reports only hard safety
limits (the cart hitting a rail end fast, a diverged simulation), which also stop the robot.

Evaluation instrumentation lives apart from the robot interface: `backend.probe()` returns a
`SimRealProbe` with the true (noise-free) state and observation and the task's reward computed
from the true state. A real robot would need a motion-capture rig for these; a planner or the
deploy loop's model must never read them.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Mapping

import mujoco
import numpy as np

from simdist.backends.base import RobotInterface, RobotSpec
from simdist.backends.gaps import full_gap, resolve_gap
from simdist.errors import RobotError

MODES = ("lock-step", "real-time")

_BAD_STATE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


# ---- per-robot numpy hooks ---------------------------------------------------------------
class SimRealAdapter:
    """What `sim-real` needs from a robot beyond its MJCF: numpy copies of the task's
    initial state, ctrl mapping, deployable observation and reward, and its safety limits."""

    def __init__(self, robot, env_config=None):
        self.robot = robot
        self.task = robot.make_task(env_config)
        self.config = self.task.config

    def load_model(self) -> mujoco.MjModel:
        return self.task.mj_model()

    def apply_gap(self, model: mujoco.MjModel, gap: Mapping[str, float]) -> None:
        physical = {k: v for k, v in gap.items() if k not in ("latency", "obs_noise")}
        apply = getattr(self.robot, "apply_gap", None)
        if physical and apply is None:
            raise RobotError(f"robot '{self.robot.name}' has no physical gap keys; got {sorted(physical)}")
        if apply is not None:
            apply(model, physical)

    def load_gapped_model(self, gap: Mapping[str, float]) -> mujoco.MjModel:
        """The real robot's model: the nominal one with the gap applied. Robots whose gap
        needs a recompiled model (a moved static geom) override this."""
        model = self.load_model()
        self.apply_gap(model, gap)
        return model

    def spec(self, model: mujoco.MjModel) -> RobotSpec:
        t = self.task
        return RobotSpec(
            robot=self.robot.name,
            control_dt=float(self.config.ctrl_dt),
            action_size=int(t.action_size),
            action_low=-np.ones(t.action_size),
            action_high=np.ones(t.action_size),
            obs_names=tuple(t.deployable_obs_names),
            obs_size=len(t.deployable_obs_names),
            command_size=int(t.command_size),
        )

    def initial_state(self, model, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def ctrl(self, model, data, action: np.ndarray) -> np.ndarray:
        return np.clip(action, -1.0, 1.0)

    def observe(self, model, data) -> np.ndarray:
        raise NotImplementedError

    def reward(self, model, data, action: np.ndarray) -> float:
        raise NotImplementedError

    def safety_fault(self, model, data) -> str | None:
        return None

    def command(self) -> np.ndarray:
        """The task command the robot is given (the deploy command); zeros by default."""
        return np.zeros((int(self.task.command_size),), np.float32)

    def reset_memory(self) -> None:
        """Forget controller-side state kept between ticks (the previous action of robots whose
        observation holds it). Called whenever the episode (re)starts: reset and set_state."""

    def episode_metrics(self, qpos: np.ndarray, qvel: np.ndarray, commands: np.ndarray) -> dict[str, float]:
        """Evaluation metrics of one episode from its true trajectory (for the deploy report).

        `qpos`/`qvel` rows are the start state and then the state after each control tick
        (T + 1 rows); `commands` holds the robot's command at each tick (T rows). None by
        default; the quadruped reports forward progress and velocity tracking error.
        """
        return {}

    def after_tick(self, model, data, commanded: np.ndarray) -> None:
        """Called once per control period after the physics and the reward, before the
        sensors are read, with the action the planner commanded (robots whose observation
        holds the previous action or other controller state update it here)."""


# ---- the backend -------------------------------------------------------------------------
class SimRealRobot(RobotInterface):
    """The `sim-real` backend. See the module docstring."""

    def __init__(
        self,
        robot,
        gap: str | Mapping[str, float] | None = None,
        mode: str = "lock-step",
        seed: int = 0,
        *,
        env_config=None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if isinstance(robot, str):
            from simdist.robot import get_robot

            robot = get_robot(robot)
        adapter_cls = getattr(robot, "sim_real_adapter", None)
        if adapter_cls is None:
            raise RobotError(f"robot '{robot.name}' has no sim-real adapter, so the sim-real backend cannot run it")
        if mode not in MODES:
            raise RobotError(f"unknown robot mode '{mode}'; modes: {', '.join(MODES)}")
        self.robot = robot
        self.mode = mode
        self.seed = int(seed)
        self.gap: dict[str, float] = resolve_gap(robot, gap if gap is not None else {})
        self._gap_full = full_gap(robot, self.gap)
        self.latency = int(self._gap_full["latency"])
        self.obs_noise = float(self._gap_full["obs_noise"])
        self._adapter = adapter_cls(robot, env_config)
        nominal = self._adapter.load_model()
        super().__init__(self._adapter.spec(nominal))
        self._clock = clock
        self._sleep = sleep
        # The simulator. Private: a planner talks to the robot through RobotInterface only;
        # evaluation and tests read the truth through `probe()`.
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self.n_substeps = max(1, int(round(self.spec.control_dt / float(nominal.opt.timestep))))
        self._probe: SimRealProbe | None = None
        self._init_rngs(self.seed)
        self._zero = np.zeros(self.spec.action_size)
        self._held = self._zero.copy()
        self._fifo: collections.deque = collections.deque()
        self._tick = 0
        self._served_tick = 0
        self._fresh = False
        self._t0 = 0.0
        self._fault: str | None = None
        self._obs = np.zeros(self.spec.obs_size, np.float32)
        self._warn0 = np.zeros(len(_BAD_STATE_WARNINGS), int)
        self._episode_started = False
        self._in_advance = False

    # ---- public read-only hooks (research scripts, evaluation) --------------------------
    @property
    def adapter(self) -> SimRealAdapter:
        """The robot's sim-real adapter (its numpy twins of the task)."""
        return self._adapter

    @property
    def mj_model(self) -> mujoco.MjModel | None:
        """The classic-MuJoCo model of the "real" robot, gap applied (None before connect)."""
        return self._model

    @property
    def mj_data(self) -> mujoco.MjData | None:
        """The classic-MuJoCo data of the "real" robot (None before connect). Evaluation only:
        a planner talks to the robot through RobotInterface."""
        return self._data

    def _init_rngs(self, seed: int) -> None:
        self._rng_init = np.random.default_rng([seed, 0])
        self._rng_noise = np.random.default_rng([seed, 1])

    # ---- hooks -------------------------------------------------------------------------
    def _connect(self) -> None:
        model = self._adapter.load_gapped_model(self.gap)
        self._model = model
        self._data = mujoco.MjData(model)
        self._probe = SimRealProbe(self)

    def _close(self) -> None:
        self._model = None
        self._data = None
        self._episode_started = False

    def _reset(self, seed):
        if seed is not None:
            self._init_rngs(int(seed))
        qpos, qvel = self._adapter.initial_state(self._model, self._rng_init)
        self._set_state(qpos, qvel)
        self._episode_started = True
        if self.mode == "real-time":
            self._t0 = self._clock()
        return self._obs

    def _set_state(self, qpos, qvel) -> None:
        """Put the robot in a state (reset, and the probe's test instrumentation)."""
        m, d = self._model, self._data
        mujoco.mj_resetData(m, d)
        d.qpos[:] = qpos
        d.qvel[:] = qvel
        mujoco.mj_forward(m, d)
        self._held = self._zero.copy()
        self._fifo = collections.deque(self._zero.copy() for _ in range(self.latency))
        self._tick = 0
        self._served_tick = 0
        self._fresh = False
        self._fault = None
        self._warn0 = np.array([d.warning[w].number for w in _BAD_STATE_WARNINGS])
        self._adapter.reset_memory()
        self._probe._reset_episode()
        self._sense()

    def _observe(self):
        self._require_episode("observe")
        if self.mode == "real-time":
            self._catch_up()
        self._served_tick = self._tick
        return self._obs

    def _act(self, action):
        self._require_episode("act")
        if self.mode == "real-time":
            self._catch_up()
            if self._tick > self._served_tick:
                self._counters["missed_deadlines"] += 1
        self._held = action.copy()
        self._fresh = True

    def _wait_tick(self):
        self._require_episode("step")
        if self.mode == "lock-step":
            self._advance()
            return
        self._catch_up()
        target = self._tick + 1
        while True:
            now = self._clock()
            if self._ticks_at(now) >= target:
                break
            self._sleep(max(self._t0 + target * self.spec.control_dt - now, 1e-4))
        self._catch_up()

    def _stop(self):
        if self._data is None:
            return
        if self.mode == "real-time" and self._episode_started and not self._in_advance:
            self._catch_up()  # the robot ran on its last action until now
        self._held = self._zero.copy()
        self._fifo = collections.deque(self._zero.copy() for _ in range(self.latency))
        self._data.ctrl[:] = 0.0

    def _safety_fault(self):
        return self._fault

    def _command(self) -> np.ndarray:
        return self._adapter.command()

    def _extra_stats(self) -> dict[str, Any]:
        s = {
            "mode": self.mode,
            "sim_time_s": self._tick * self.spec.control_dt,
            "n_substeps": self.n_substeps,
            "gap": dict(self.gap),
        }
        if self.mode == "real-time":
            s["wall_time_s"] = self._clock() - self._t0 if self._episode_started else 0.0
        return s

    # ---- internals ---------------------------------------------------------------------
    def _require_episode(self, what: str) -> None:
        if not self._episode_started:
            raise RobotError(f"{self.spec.robot}: {what}() before reset(); call reset() first")

    def _ticks_at(self, now: float) -> int:
        return int((now - self._t0) // self.spec.control_dt)

    def _catch_up(self) -> None:
        target = self._ticks_at(self._clock())
        while self._tick < target:
            self._advance()

    def _sense(self) -> None:
        true = self._adapter.observe(self._model, self._data)
        if self.obs_noise > 0:
            true = true + self._rng_noise.normal(0.0, self.obs_noise, true.shape)
        self._obs = np.asarray(true, np.float32)

    def _advance(self) -> None:
        """One control period: latency FIFO, ctrl, physics substeps, safety, sensors."""
        t = time.perf_counter()
        m, d = self._model, self._data
        commanded = self._zero if self._stopped else self._held
        if not self._fresh and not self._stopped:
            self._counters["stale_ticks"] += 1
        self._fresh = False
        if self.latency:
            self._fifo.append(commanded.copy())
            applied = self._fifo.popleft()
        else:
            applied = commanded
        d.ctrl[:] = self._adapter.ctrl(m, d, applied)
        fault = None
        for _ in range(self.n_substeps):
            mujoco.mj_step(m, d)
            fault = fault or self._adapter.safety_fault(m, d)
        unsafe = fault is not None  # the task's safety limit (costs its penalty, as in training)
        warns = np.array([d.warning[w].number for w in _BAD_STATE_WARNINGS])
        if np.any(warns > self._warn0) or not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))):
            fault = fault or "the simulation diverged (non-finite or huge state)"
            self._warn0 = warns
        self._tick += 1
        self._counters["control_steps"] += 1
        self._probe._record(commanded, unsafe)
        self._adapter.after_tick(m, d, commanded)
        self._sense()
        self._compute_s += time.perf_counter() - t
        if fault is not None and self._fault is None:
            self._fault = fault
            self._counters["safety_stops"] += 1
            self._in_advance = True
            try:
                self.stop(reason=f"safety limit: {fault}")
            finally:
                self._in_advance = False

    # ---- evaluation instrumentation (not part of the robot interface) -------------------
    def probe(self) -> "SimRealProbe":
        """Evaluation instrumentation: the true state and the task reward. Not for planners."""
        self._require_connected("probe")
        return self._probe


class SimRealProbe:
    """Evaluation instrumentation of a `sim-real` robot: ground truth a planner never sees.

    A real robot would need a motion-capture rig for this. The deploy loop may use it only to
    *report* the real-robot return; neither the planner nor the world model may read it.

    The reward of every control tick, r(s_{t+1}, a_t) with the task's formula on the true
    state and the action the planner commanded at that tick, is recorded as the robot runs
    (also in real-time mode, for ticks no one observed). The tick that trips the robot's
    safety limit costs the task's `safety_penalty` too, as in the training simulator.
    """

    def __init__(self, backend: SimRealRobot):
        self._b = backend
        self._reset_episode()

    def _reset_episode(self) -> None:
        self.rewards: list[float] = []
        d = self._b._data
        self._qpos: list[np.ndarray] = [d.qpos.copy()] if d is not None else []
        self._qvel: list[np.ndarray] = [d.qvel.copy()] if d is not None else []
        self._commands: list[np.ndarray] = []

    def _record(self, commanded: np.ndarray, unsafe: bool = False) -> None:
        b = self._b
        r = b._adapter.reward(b._model, b._data, commanded)
        self.rewards.append(r - b._adapter.task.safety_penalty if unsafe else r)
        self._qpos.append(b._data.qpos.copy())
        self._qvel.append(b._data.qvel.copy())
        self._commands.append(np.asarray(b._adapter.command(), np.float64).copy())

    def episode_metrics(self) -> dict[str, float]:
        """The robot's evaluation metrics of the episode so far (e.g. the quadruped's forward
        progress in metres and velocity tracking error), from the true trajectory."""
        if len(self._qpos) < 2:
            return {}
        cmd = np.stack(self._commands) if self._commands else np.zeros((0, 0))
        return {k: float(v) for k, v in
                self._b._adapter.episode_metrics(np.stack(self._qpos), np.stack(self._qvel), cmd).items()}

    @property
    def episode_return(self) -> float:
        """Sum of the task reward over the control ticks since reset."""
        return float(np.sum(self.rewards)) if self.rewards else 0.0

    def ground_truth_reward(self) -> float:
        """The task reward of the last control tick (0 before the first)."""
        return self.rewards[-1] if self.rewards else 0.0

    def true_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel) copies of the simulator's state."""
        return self._b._data.qpos.copy(), self._b._data.qvel.copy()

    def true_observation(self) -> np.ndarray:
        """The deployable observation without sensor noise."""
        return self._b._adapter.observe(self._b._model, self._b._data)

    def set_state(self, qpos, qvel) -> np.ndarray:
        """Test instrumentation: restart the episode from this exact state; returns the first
        (noisy) observation, as `reset` would."""
        b = self._b
        b._require_connected("set_state")
        b._stopped = False
        b._stop_reason = None
        b._set_state(np.asarray(qpos, np.float64), np.asarray(qvel, np.float64))
        b._episode_started = True
        if b.mode == "real-time":
            b._t0 = b._clock()
        return b._obs.copy()

    @property
    def model(self) -> mujoco.MjModel:
        """The simulator's model, with the gap applied."""
        return self._b._model

    @property
    def ctrl(self) -> np.ndarray:
        """The actuator control the motor is applying now (after the latency FIFO)."""
        return self._b._data.ctrl.copy()

    @property
    def sim_time(self) -> float:
        return self._b._tick * self._b.spec.control_dt

    @property
    def gap(self) -> dict[str, float]:
        return dict(self._b._gap_full)
