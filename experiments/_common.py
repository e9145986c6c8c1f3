"""Helpers shared by more than one experiment (import them as `experiments._common`, with the
experiments run as modules from the repository root: `python -m experiments.<name>`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from mujoco import rollout

from simdist.robots.quadruped import task as qt

SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


class TrueRollout:
    """Observations of candidate action sequences on the real robot's own physics."""

    def __init__(self, backend, threads: int = 2):
        self.b = backend
        self.m = backend.mj_model
        self.datas = [mujoco.MjData(self.m) for _ in range(threads)]
        self.nsub = backend.n_substeps
        self.nq, self.nv = self.m.nq, self.m.nv
        self.lo, self.hi = self.m.actuator_ctrlrange[:, 0], self.m.actuator_ctrlrange[:, 1]
        terrain = backend.adapter.terrain
        command = jnp.asarray(backend.adapter.command(), jnp.float32)

        def obs_one(qpos, qvel, t, last_action):
            p = qt.proprio(qpos, qvel, t, last_action, command, jnp)
            return jnp.concatenate([p, qt.height_scan(terrain, qpos, jnp)]).astype(jnp.float32)

        self.obs_fn = jax.jit(jax.vmap(obs_one))
        self.state = np.zeros(mujoco.mj_stateSize(self.m, SPEC))

    def capture(self) -> None:
        mujoco.mj_getState(self.m, self.b.mj_data, self.state, SPEC)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        n, t, a = actions.shape
        act = np.clip(np.asarray(actions, np.float64), -1.0, 1.0)
        target = np.clip(qt.DEFAULT_POSE + qt.ACTION_SCALE * act, self.lo, self.hi)
        ctrl = np.repeat(target, self.nsub, axis=1)
        states, _ = rollout.rollout(self.m, self.datas, self.state[None], ctrl, persistent_pool=True)
        s = states[:, self.nsub - 1 :: self.nsub].reshape(n * t, -1)  # the state after each control step
        qpos, qvel = s[:, 1 : 1 + self.nq], s[:, 1 + self.nq : 1 + self.nq + self.nv]
        obs = self.obs_fn(qpos, qvel, s[:, 0], act.reshape(n * t, a))
        return np.asarray(obs, np.float32).reshape(n, t, -1)
