"""A generic MJX environment as pure functions: `reset(key)` and `step(state, action)`.

Single-environment functions; `jax.vmap` them (or use `batch_reset`/`batch_step`) for many
environments. Each environment carries its own randomised physical parameters in its state,
drawn again at every reset, so domain randomisation needs no batched model.

Auto-reset: when an episode ends, `step` returns the first state of a fresh episode, and keeps
the last observation of the ended one in `final_obs` (for value bootstrapping on truncation)
and its return in `completed_return`. `batch_step` equals `jax.vmap(step)` (bit for bit on the cartpole) but
builds fresh states only at steps where some env ended (a batch-level `lax.cond`); hot loops
use it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from simdist._mjx import mjx
from simdist.envs.task import Task


@struct.dataclass
class EnvState:
    data: mjx.Data
    params: dict[str, jax.Array]  # this env's randomised model fields
    deployable_obs: jax.Array
    privileged_obs: jax.Array
    reward: jax.Array
    terminated: jax.Array  # failure
    truncated: jax.Array  # time limit
    step_count: jax.Array
    key: jax.Array
    info: dict[str, Any]
    final_obs: jax.Array  # privileged obs before an auto-reset (== privileged_obs otherwise)
    episode_return: jax.Array  # running return of the current episode
    completed_return: jax.Array  # return of the episode that ended at this step

    @property
    def done(self) -> jax.Array:
        return self.terminated | self.truncated


class MjxEnv:
    def __init__(self, task: Task):
        self.task = task
        self.config = task.config
        self.mj_model = task.mj_model()
        self.model = mjx.put_model(self.mj_model)
        timestep = float(self.mj_model.opt.timestep)
        self.n_substeps = max(1, int(round(self.config.ctrl_dt / timestep)))
        self.action_size = task.action_size
        self._fields = task.randomized_fields()

    # ---- helpers -----------------------------------------------------------------------
    def model_for(self, params: dict[str, jax.Array]) -> mjx.Model:
        return self.model.replace(**params) if params else self.model

    def sample_params(self, key: jax.Array) -> dict[str, jax.Array]:
        if not self.config.randomize or not self._fields:
            return {f: getattr(self.model, f) for f in self._fields}
        model = self.task.randomize(self.model, key)
        return {f: getattr(model, f) for f in self._fields}

    def _fresh(self, key: jax.Array) -> EnvState:
        k_rand, k_init, k_next = jax.random.split(key, 3)
        params = self.sample_params(k_rand)
        model = self.model_for(params)
        qpos, qvel, info = self.task.initial_state(model, k_init)
        data = mjx.make_data(model).replace(qpos=qpos, qvel=qvel)
        data = mjx.forward(model, data)
        dep, priv = self.task.observe(model, data, info)
        zero = jnp.zeros((), jnp.float32)
        false = jnp.zeros((), bool)
        return EnvState(
            data=data,
            params=params,
            deployable_obs=dep,
            privileged_obs=priv,
            reward=zero,
            terminated=false,
            truncated=false,
            step_count=jnp.zeros((), jnp.int32),
            key=k_next,
            info=info,
            final_obs=priv,
            episode_return=zero,
            completed_return=zero,
        )

    def _advance(self, state: EnvState, action: jax.Array) -> tuple[EnvState, jax.Array]:
        """One control step (n_substeps physics steps) without auto-reset.

        Returns the stepped state and the key a reset of this env would use (`_maybe_reset`).
        """
        task = self.task
        model = self.model_for(state.params)
        key, k_info, k_reset = jax.random.split(state.key, 3)
        data = state.data.replace(ctrl=task.ctrl(model, state.data, action, state.info))

        def physics(_, carry):
            d, unsafe = carry
            d = mjx.step(model, d)
            return d, unsafe | task.unsafe(model, d)

        # The safety limit is checked after every substep, as the real robot checks it.
        data, unsafe = jax.lax.fori_loop(0, self.n_substeps, physics, (data, jnp.zeros((), bool)))
        reward, _ = task.reward(model, data, action, state.info)
        info = task.update_info(model, data, action, state.info, k_info)
        dep, priv = task.observe(model, data, info)
        terminated = task.terminated(model, data, info) | unsafe
        step_count = state.step_count + 1
        truncated = (step_count >= self.config.episode_length) & ~terminated
        reward = jnp.where(jnp.isfinite(reward), reward, 0.0) - task.safety_penalty * unsafe
        reward = reward.astype(jnp.float32)
        dep = jnp.nan_to_num(dep)
        priv = jnp.nan_to_num(priv)
        episode_return = state.episode_return + reward

        stepped = state.replace(
            data=data,
            deployable_obs=dep,
            privileged_obs=priv,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            step_count=step_count,
            key=key,
            info=info,
            final_obs=priv,
            episode_return=episode_return,
            completed_return=episode_return,
        )
        return stepped, k_reset

    def _maybe_reset(self, stepped: EnvState, k_reset: jax.Array) -> EnvState:
        """Auto-reset one env: a fresh episode (from `k_reset`) if `stepped` ended, else `stepped`.

        The fresh state keeps the ended episode's reward, end flags, last privileged obs
        (`final_obs`) and return (`completed_return`).
        """
        fresh = self._fresh(k_reset)
        fresh = fresh.replace(
            reward=stepped.reward,
            terminated=stepped.terminated,
            truncated=stepped.truncated,
            final_obs=stepped.privileged_obs,
            completed_return=stepped.episode_return,
        )
        done = stepped.done
        return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, stepped)

    # ---- API ---------------------------------------------------------------------------
    def reset(self, key: jax.Array) -> EnvState:
        return self._fresh(key)

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """One control step (n_substeps physics steps), then auto-reset if the episode ended.

        Single env; under `jax.vmap` the reset is computed for every env at every step and
        selected with `where`. `batch_step` gives the same result and builds fresh states only
        at steps where some env ended.
        """
        return self._maybe_reset(*self._advance(state, action))

    def batch_reset(self, key: jax.Array, num_envs: int) -> EnvState:
        return jax.vmap(self.reset)(jax.random.split(key, num_envs))

    def batch_step(self, state: EnvState, action: jax.Array) -> EnvState:
        """`jax.vmap(self.step)` with lazy auto-reset.

        The physics/reward/obs part (`_advance`) is vmapped over envs; fresh states (domain
        randomisation, initial state, `mjx.forward`, observe) are built only inside a
        batch-level `lax.cond` taken when some env ended at this step. Outside any vmap that is
        a real branch, so steps where no episode ends skip the reset work entirely.

        Same keys, same formulas as `jax.vmap(self.step)`; the cartpole matches it bit for bit.
        On the quadruped a freshly reset env can differ in the last bit of some contact fields
        (XLA compiles the reset differently alone than fused with the physics); the tests
        compare to a tight tolerance there. (Under an outer vmap the cond becomes a select
        and both branches run.)
        """
        stepped, k_reset = jax.vmap(self._advance)(state, action)
        return jax.lax.cond(
            jnp.any(stepped.done),
            lambda: jax.vmap(self._maybe_reset)(stepped, k_reset),
            lambda: stepped,
        )

    @property
    def deployable_obs_size(self) -> int:
        return len(self.task.deployable_obs_names)

    @property
    def privileged_obs_size(self) -> int:
        return len(self.task.privileged_obs_names)
