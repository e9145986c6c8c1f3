"""The cartpole's `sim-real` adapter: numpy twins of robots/cartpole/task.py (initial state,
deployable observation, reward) and its safety limit, for the classic MuJoCo "real robot".
The `Robot` (robots/cartpole/__init__.py) names it as its `sim_real_adapter`."""

from __future__ import annotations

import numpy as np

from simdist.backends.sim_real import SimRealAdapter
from simdist.robots.cartpole import task as cp


def _tolerance_gaussian(x, margin: float, value_at_margin: float = 0.1):
    scale = np.sqrt(-2.0 * np.log(value_at_margin))
    return np.exp(-0.5 * (x / margin * scale) ** 2)


class CartpoleAdapter(SimRealAdapter):
    """numpy twins of robots/cartpole/task.py (initial_state, observe, reward)."""

    def __init__(self, robot, env_config=None):
        super().__init__(robot, env_config)
        self._slider = cp.SLIDER_DOF
        self._hinge = cp.HINGE_DOF

    def initial_state(self, model, rng):
        noise = float(self.config.init_noise)
        qpos = np.array([0.0, np.pi]) + noise * rng.standard_normal(2)
        qvel = noise * rng.standard_normal(2)
        return qpos, qvel

    def observe(self, model, data):
        x, theta = data.qpos[0], data.qpos[1]
        return np.array([x, np.cos(theta), np.sin(theta), data.qvel[0], data.qvel[1]], np.float64).astype(np.float32)

    def reward(self, model, data, action):
        x, theta = float(data.qpos[0]), float(data.qpos[1])
        upright = (np.cos(theta) + 1.0) / 2.0
        centred = (1.0 + _tolerance_gaussian(x, margin=2.0)) / 2.0
        u = float(np.clip(action[0], -1.0, 1.0))
        small_control = (4.0 + max(1.0 - u**2, 0.0)) / 5.0
        small_velocity = (1.0 + _tolerance_gaussian(float(data.qvel[1]), margin=5.0)) / 2.0
        return float(upright * centred * small_control * small_velocity)

    def safety_fault(self, model, data):
        x, xd = float(data.qpos[self._slider]), float(data.qvel[self._slider])
        limit = float(self.config.rail_impact_speed)
        if cp.rail_impact(x, xd, float(model.jnt_range[self._slider, 1]), limit, np):
            return f"cart hit the rail end at {abs(xd):.1f} m/s (limit {limit:g})"
        return None
