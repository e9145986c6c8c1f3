"""Controllers the deploy loop runs online: the MPPI planner over a world model, the Stage 1
expert on deployable observations, and a zero-action baseline.

A controller sees only what a real robot gives: the deployable observation and the task
command. `reset(obs, command)` starts an episode; `act(obs, command)` returns the action in
raw units (the deploy loop clamps it to the robot's limits) and a dict of float diagnostics.

PlannerController
-----------------
- History: a ring of the last H = ``model.cfg.history`` (observation, action) pairs, "the H
  transitions before t". At reset it holds the first observation repeated with ZERO actions
  (the dataset's padding convention, `simdist.data.windows`); after each `act` the pair
  (o_t, a_t) it just acted on is pushed. `history` returns copies, oldest first.
- One jitted function per control step,
  ``(params, hist_obs, hist_act, obs, command, prev PlanState, key) -> (action, PlanState, diag)``:
  it encodes the context ONCE (`WorldModel.context`, unbatched) and runs `mppi.plan`, whose
  sampling loop calls only dynamics, reward and value (the policy prior `WorldModel.prior` is
  evaluated once per step). Dynamics is `vmap`ped over the action samples with the context
  unbatched (a batch-1 context does not broadcast against N samples).
- Warm start across steps: the PlanState returned by one step is the `prev` of the next
  (the planner shifts it); at reset the state is the cold `init_plan_state`. The state lives
  on the host (numpy) between steps so that the cold and carried states hit the SAME
  compiled program (jit specialises on committed device arrays); `warmup` compiles it.
- A non-finite action (diag ``finite`` false) raises `PlannerError`; the deploy loop then
  stops the robot.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import numpy as np
from flax import nnx

from simdist.errors import ConfigError, PlannerError
from simdist.planning.mppi import MPPIConfig, PlanModel, PlanState, init_plan_state, plan

__all__ = [
    "Controller",
    "ExpertController",
    "PlannerController",
    "ZeroController",
    "world_model_plan_model",
]


class Controller(abc.ABC):
    """An online controller. See the module docstring."""

    name: str = "controller"

    @abc.abstractmethod
    def reset(self, obs: np.ndarray, command: np.ndarray) -> None:
        """Start a new episode whose first observation is `obs`."""

    @abc.abstractmethod
    def act(self, obs: np.ndarray, command: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The action for observation `obs` (raw units, not yet clamped) and diagnostics."""

    def warmup(self, obs_size: int, command_size: int) -> None:
        """Compile whatever needs compiling, without changing the controller's state.

        Called once before the first episode (before the robot's clock starts), so that the
        first control step does not pay for JIT compilation.
        """

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


# ---- the world model as a PlanModel --------------------------------------------------------


def world_model_plan_model(model) -> tuple[PlanModel, Any]:
    """Adapt a `WorldModel` to the planner: ``(PlanModel, params)``.

    The module is split once (`nnx.split`); ``params`` is the nnx State (parameters and
    normalisation statistics) and every function merges it with the closed-over graphdef.
    ``ctx`` is the unbatched context of `WorldModel.context`; dynamics is vmapped over the
    N action samples with the context unbatched (in_axes None). Raw units throughout.
    """
    graphdef, state = nnx.split(model)

    def merged(params):
        return nnx.merge(graphdef, params)

    def dynamics(params, ctx, actions):  # actions [N, T, A] -> z [N, T, Z]
        return jax.vmap(lambda a: merged(params).dynamics(ctx, a))(actions)

    def reward(params, z_prev, actions, z_next, command):  # [N, T, ...] -> [N, T]
        return merged(params).reward(z_prev, actions, z_next, command)

    def value(params, z, command):  # z [N, Z] -> [N]
        return merged(params).value(z, command)

    def prior(params, ctx, command):  # -> [horizon, A]
        return merged(params).prior(ctx, command)

    def prior_rollout(params, ctx, command, steps):  # -> [steps, A]
        return merged(params).prior_rollout(ctx, command, steps)

    return PlanModel(dynamics, reward, value, prior, lambda ctx: ctx["z0"], prior_rollout), state


def _host_state(state: PlanState) -> PlanState:
    return PlanState(mean=np.asarray(state.mean, np.float32), std=np.asarray(state.std, np.float32))


def _floats(diag: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(diag).items()}


class PlannerController(Controller):
    """MPPI over a latent world model. See the module docstring."""

    name = "planner"

    def __init__(self, model, mppi: MPPIConfig, action_low, action_high, seed: int = 0, warm_start: bool = True):
        cfg = model.cfg
        if mppi.horizon > cfg.horizon:
            raise ConfigError(
                f"MPPI horizon {mppi.horizon} is longer than the world model's horizon {cfg.horizon}; "
                "choose a preset with a shorter horizon"
            )
        lo = np.broadcast_to(np.asarray(action_low, np.float32), (cfg.action_size,)).copy()
        hi = np.broadcast_to(np.asarray(action_high, np.float32), (cfg.action_size,)).copy()
        if np.any(lo > hi):
            raise ConfigError(f"action bounds must have low <= high, got {lo} and {hi}")
        self.model = model
        self.mppi = mppi
        self.warm_start = bool(warm_start)
        self.action_low, self.action_high = lo, hi
        self.history_len = int(cfg.history)
        self.obs_size, self.action_size, self.command_size = cfg.obs_size, cfg.action_size, cfg.command_size
        self.plan_model, self.params = world_model_plan_model(model)
        self._key = jax.random.key(seed)
        self._calls = 0  # control steps over the controller's life: the per-step key
        self.step = 0  # control steps in this episode
        plan_model, warm = self.plan_model, self.warm_start
        graphdef = nnx.split(model)[0]

        def control_step(params, hist_obs, hist_act, obs, command, prev, key):
            ctx = nnx.merge(graphdef, params).context(hist_obs, hist_act, obs)  # encoded once
            return plan(mppi, plan_model, params, ctx, command, prev, key, lo, hi, warm_start=warm)

        self._step_fn = jax.jit(control_step)
        self._hist_obs = np.zeros((self.history_len, self.obs_size), np.float32)
        self._hist_act = np.zeros((self.history_len, self.action_size), np.float32)
        self.state: PlanState = self._cold_state()
        self.last_diag: dict[str, float] = {}

    def _cold_state(self) -> PlanState:
        return _host_state(init_plan_state(self.mppi, self.action_size, self.action_low, self.action_high))

    def _plan(self, hist_obs, hist_act, obs, command, state, key):
        """The jitted control step, always called with host (numpy) arrays and a fresh key.

        The PlanState is kept on the host between steps: jit specialises on whether an
        argument is a committed device array, so mixing the cold state (uncommitted) and a
        previous output (committed) would compile the step twice, the second time in the
        middle of an episode.
        """
        # One device-to-host transfer for everything the step returns.
        action, new_state, diag = jax.device_get(self._step_fn(self.params, hist_obs, hist_act, obs, command,
                                                               state, key))
        return np.asarray(action, np.float32), _host_state(new_state), _floats(diag)

    def _obs(self, obs) -> np.ndarray:
        o = np.asarray(obs, np.float32).reshape(-1)
        if o.size != self.obs_size:
            raise PlannerError(f"observation has {o.size} entries, the world model takes {self.obs_size}")
        return o

    def _command(self, command) -> np.ndarray:
        c = np.zeros((0,), np.float32) if command is None else np.asarray(command, np.float32).reshape(-1)
        if c.size != self.command_size:
            raise PlannerError(f"command has {c.size} entries, the world model takes {self.command_size}")
        return c

    @property
    def history(self) -> tuple[np.ndarray, np.ndarray]:
        """(hist_obs [H, O], hist_act [H, A]), oldest first: the H transitions before now."""
        return self._hist_obs.copy(), self._hist_act.copy()

    def reset(self, obs, command) -> None:
        o = self._obs(obs)
        self._hist_obs[:] = o
        self._hist_act[:] = 0.0
        self.state = self._cold_state()
        self.step = 0

    def warmup(self, obs_size: int, command_size: int) -> None:
        self._plan(
            np.zeros_like(self._hist_obs),
            np.zeros_like(self._hist_act),
            np.zeros((self.obs_size,), np.float32),
            np.zeros((self.command_size,), np.float32),
            self._cold_state(),
            jax.random.fold_in(self._key, 2**32 - 1),  # a key the episodes never use
        )

    def act(self, obs, command):
        o = self._obs(obs)
        c = self._command(command)
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        action, new_state, d = self._plan(self._hist_obs, self._hist_act, o, c, self.state, key)
        if not d["finite"] or not np.all(np.isfinite(action)):
            raise PlannerError(
                f"planner produced a non-finite action at step {self.step} of the episode "
                f"({int(d['nonfinite_returns'])} non-finite candidate returns)"
            )
        self.state = new_state
        self._hist_obs = np.concatenate([self._hist_obs[1:], o[None]], axis=0)
        self._hist_act = np.concatenate([self._hist_act[1:], action[None]], axis=0)
        self.step += 1
        self.last_diag = d
        return action, d

    def set_executed_action(self, action) -> None:
        """Replace the action of the last `act` in the history with the one the robot executed.

        For a wrapper that perturbs the planner's action (exploration noise while recording):
        the next steps' context then holds what the robot really did, as the recorded data does.
        """
        if self.step == 0:
            raise PlannerError("set_executed_action needs an act() in this episode first")
        a = np.asarray(action, np.float32).reshape(-1)
        if a.size != self.action_size or not np.all(np.isfinite(a)):
            raise PlannerError(f"executed action must be {self.action_size} finite values, got {a.size}")
        self._hist_act[-1] = a

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mppi": dataclasses.asdict(self.mppi), "warm_start": self.warm_start}


# ---- the Stage 1 expert on deployable observations ----------------------------------------


class ExpertController(Controller):
    """The Stage 1 expert run on the real robot's deployable observation.

    The expert was trained on privileged observations; `task.privileged_from_deployable`
    fills the privileged-only entries with nominal values (the real parameters are unknown).
    Deterministic (the policy mean).
    """

    name = "expert"

    def __init__(self, snapshot, task):
        from simdist.rl.ppo import make_policy_fn

        self.task = task
        self.snapshot = snapshot
        self.obs_size = len(task.deployable_obs_names)
        try:
            task.privileged_from_deployable(np.zeros((self.obs_size,), np.float32))
        except NotImplementedError as e:
            raise ConfigError(str(e)) from None
        policy = make_policy_fn(snapshot.graphdef, deterministic=True)

        def act_fn(params, obs_stats, obs):
            return policy(params, obs_stats, task.privileged_from_deployable(obs))

        self._act_fn = jax.jit(act_fn)
        self.step = 0

    def _obs(self, obs) -> np.ndarray:
        o = np.asarray(obs, np.float32).reshape(-1)
        if o.size != self.obs_size:
            raise PlannerError(f"observation has {o.size} entries, the expert takes {self.obs_size} deployable ones")
        return o

    def reset(self, obs, command) -> None:
        self.step = 0

    def warmup(self, obs_size: int, command_size: int) -> None:
        jax.block_until_ready(
            self._act_fn(self.snapshot.params, self.snapshot.obs_stats, np.zeros((self.obs_size,), np.float32))
        )

    def act(self, obs, command):
        a = np.asarray(self._act_fn(self.snapshot.params, self.snapshot.obs_stats, self._obs(obs)), np.float32)
        if not np.all(np.isfinite(a)):
            raise PlannerError(f"expert produced a non-finite action at step {self.step} of the episode")
        self.step += 1
        return a, {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "iteration": int(self.snapshot.iteration)}


class ZeroController(Controller):
    """Always the zero action: a do-nothing baseline."""

    name = "zero"

    def __init__(self, action_size: int):
        self.action_size = int(action_size)

    def reset(self, obs, command) -> None:
        pass

    def act(self, obs, command):
        return np.zeros((self.action_size,), np.float32), {}
