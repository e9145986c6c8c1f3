"""The tiny slider: task, randomisation, reality gaps and sim-real adapter of the test robot.

State: position x and velocity xd of a point mass on a rail (slider.xml). Deployable
observation (x, xd); privileged adds the randomised mass and motor gain as offsets from
nominal. Reward in [0, 1] per control step: exp(-(x / 0.5)^2) * (0.9 + 0.1 (1 - u^2)), so a
policy that drives the mass to the origin and holds it there earns close to 1 per step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from simdist.backends.gaps import GapKey, multiplier
from simdist.backends.sim_real import SimRealAdapter
from simdist.envs.task import EnvConfig, RandomizedParam, Task

XML = Path(__file__).with_name("slider.xml")
BODY, DOF = 1, 0
NOMINAL_MASS, NOMINAL_GEAR = 1.0, 5.0


@dataclasses.dataclass(frozen=True)
class SliderEnvConfig(EnvConfig):
    episode_length: int = 100
    mass_range: tuple[float, float] = (0.8, 1.2)
    gain_range: tuple[float, float] = (0.8, 1.2)
    start_range: float = 1.5  # x starts uniform in +- this (m)


def _reward(x, u, xp):
    return xp.exp(-((x / 0.5) ** 2)) * (0.9 + 0.1 * (1.0 - xp.clip(u, -1.0, 1.0) ** 2))


class SliderTask(Task):
    name = "tiny_slider"
    xml_path = XML
    action_size = 1
    deployable_obs_names = ("x", "xd")
    privileged_obs_names = deployable_obs_names + ("mass_offset", "gain_offset")
    config: SliderEnvConfig

    def randomized_params(self):
        c = self.config
        return (RandomizedParam("mass", "body_mass", (BODY,), *c.mass_range),
                RandomizedParam("gain", "actuator_gear", (0,), *c.gain_range))

    def randomize(self, model, key):
        k1, k2 = jax.random.split(key)
        c = self.config
        m = jax.random.uniform(k1, (), minval=c.mass_range[0], maxval=c.mass_range[1])
        g = jax.random.uniform(k2, (), minval=c.gain_range[0], maxval=c.gain_range[1])
        return model.replace(body_mass=model.body_mass.at[BODY].multiply(m),
                             actuator_gear=model.actuator_gear.at[0, 0].multiply(g))

    def initial_state(self, model, key):
        x = jax.random.uniform(key, (1,), minval=-self.config.start_range, maxval=self.config.start_range)
        return x, jnp.zeros((1,)), {"last_action": jnp.zeros((1,))}  # info must hold an array (vmapped)

    def observe(self, model, data, info):
        dep = jnp.stack([data.qpos[0], data.qvel[0]]).astype(jnp.float32)
        rel = jnp.stack([model.body_mass[BODY] / NOMINAL_MASS - 1.0, model.actuator_gear[0, 0] / NOMINAL_GEAR - 1.0])
        return dep, jnp.concatenate([dep, rel]).astype(jnp.float32)

    def reward(self, model, data, action, info):
        r = _reward(data.qpos[0], action[0], jnp)
        return r, {"near": r}

    def privileged_from_deployable(self, deployable):
        xp = jnp if isinstance(deployable, jax.Array) else np
        d = xp.asarray(deployable, dtype=xp.float32)
        return xp.concatenate([d, xp.zeros(d.shape[:-1] + (2,), xp.float32)], axis=-1)


# ---- reality gaps ------------------------------------------------------------------------
GAP_KEYS: dict[str, GapKey] = {
    "mass": multiplier("mass", "mass of the slider"),
    "motor_gain": multiplier("motor_gain", "motor force per unit action"),
}
GAPS = {"none": {}, "default": {"mass": 2.0, "motor_gain": 0.5}}
GAP_NOTES = {"none": "the nominal model", "default": "twice the mass, half the motor (training saw 0.8-1.2x)"}


def apply_gap(model: mujoco.MjModel, gap: Mapping[str, float]) -> None:
    model.body_mass[BODY] *= float(gap.get("mass", 1.0))
    model.actuator_gear[0, 0] *= float(gap.get("motor_gain", 1.0))


# ---- the sim-real adapter ----------------------------------------------------------------
class SliderAdapter(SimRealAdapter):
    """numpy twins of SliderTask's initial state, observation and reward."""

    def initial_state(self, model, rng):
        return rng.uniform(-self.config.start_range, self.config.start_range, 1), np.zeros(1)

    def observe(self, model, data):
        return np.array([data.qpos[0], data.qvel[0]], np.float32)

    def reward(self, model, data, action):
        return float(_reward(float(data.qpos[0]), float(np.asarray(action)[0]), np))
