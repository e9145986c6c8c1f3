"""Cartpole swing-up: the pole starts hanging; keep it upright with the cart near the centre.

Joint convention: `slider` is the cart position x (m), `hinge` the pole angle theta (rad) with
theta = 0 upright and theta = pi hanging.

Observations
- deployable (5): x, cos(theta), sin(theta), x_dot, theta_dot: what the cart and pole
  encoders of a real cartpole give.
- privileged (10): the deployable five, then the randomised physics as relative offsets from
  nominal: pole mass, pole length, cart friction, motor gain, hinge damping.

Reward r(s_t, a_t) in [0, 1] per control step (50 Hz), computed on the state reached by the
step: upright * centred * small_control * small_velocity, the smooth swing-up reward.

Safety limit: the real cartpole stops when the cart hits a rail end stop faster than
`rail_impact_speed` (4 m/s; `rail_impact`, shared with the sim-real adapter). The training
simulator knows the same limit: it is checked after every physics substep, ends the episode as
a failure, and costs `safety_penalty` (10) on the step that trips it, so the expert, the
reward head and the value head all learn to keep away from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from simdist._mjx import mjx
from simdist.envs.task import EnvConfig, RandomizedParam, Task

XML = Path(__file__).with_name("cartpole.xml")

# Indices into the compiled model (checked by the tests against names).
CART_BODY, POLE_BODY = 1, 2
SLIDER_DOF, HINGE_DOF = 0, 1


@dataclasses.dataclass(frozen=True)
class CartpoleEnvConfig(EnvConfig):
    episode_length: int = 300
    ctrl_dt: float = 0.02
    randomize: bool = True
    # Randomisation ranges, as multipliers of the nominal value.
    pole_mass_range: tuple[float, float] = (0.7, 1.3)
    pole_length_range: tuple[float, float] = (0.85, 1.15)
    cart_friction_range: tuple[float, float] = (0.5, 2.0)
    motor_gain_range: tuple[float, float] = (0.85, 1.15)
    hinge_damping_range: tuple[float, float] = (0.5, 2.0)
    # Initial state noise around the hanging pose.
    init_noise: float = 0.05
    # Safety limit (the real robot's): hitting a rail end stop faster than this (m/s) is a
    # failure, with this cost on the step that does it.
    rail_impact_speed: float = 4.0
    safety_penalty: float = 10.0


def _tolerance_gaussian(x: jax.Array, margin: float, value_at_margin: float = 0.1) -> jax.Array:
    scale = jnp.sqrt(-2.0 * jnp.log(value_at_margin))
    return jnp.exp(-0.5 * (x / margin * scale) ** 2)


def rail_impact(x, x_dot, rail_end, limit, xp=jnp):
    """True when the cart is at a rail end stop (within 1 mm) and moving into it faster than
    `limit` m/s: the cartpole's safety limit. numpy (`xp=np`) or jax."""
    return (xp.abs(x) >= rail_end - 1e-3) & (x * x_dot > 0) & (xp.abs(x_dot) > limit)


class CartpoleTask(Task):
    name = "cartpole"
    xml_path = XML
    action_size = 1
    deployable_obs_names = ("cart_pos", "cos_pole", "sin_pole", "cart_vel", "pole_angvel")
    privileged_obs_names = deployable_obs_names + (
        "pole_mass_offset",
        "pole_length_offset",
        "cart_friction_offset",
        "motor_gain_offset",
        "hinge_damping_offset",
    )
    config: CartpoleEnvConfig

    def randomized_params(self) -> tuple[RandomizedParam, ...]:
        c = self.config
        return (
            RandomizedParam("pole_mass", "body_mass", (POLE_BODY,), *c.pole_mass_range),
            # Length moves the pole's centre of mass and scales its inertia.
            RandomizedParam("pole_length", "body_ipos", (POLE_BODY,), *c.pole_length_range),
            RandomizedParam("pole_inertia", "body_inertia", (POLE_BODY,)),
            RandomizedParam("cart_friction", "dof_frictionloss", (SLIDER_DOF,), *c.cart_friction_range),
            RandomizedParam("motor_gain", "actuator_gear", (0,), *c.motor_gain_range),
            RandomizedParam("hinge_damping", "dof_damping", (HINGE_DOF,), *c.hinge_damping_range),
        )

    def randomize(self, model: mjx.Model, key: jax.Array) -> mjx.Model:
        c = self.config
        k = jax.random.split(key, 5)
        u = lambda kk, r: jax.random.uniform(kk, (), minval=r[0], maxval=r[1])  # noqa: E731
        mass_s = u(k[0], c.pole_mass_range)
        len_s = u(k[1], c.pole_length_range)
        fric_s = u(k[2], c.cart_friction_range)
        gain_s = u(k[3], c.motor_gain_range)
        damp_s = u(k[4], c.hinge_damping_range)
        # A uniform rod about its centre: I_perp ~ m L^2, I_axial ~ m.
        inertia_s = jnp.array([mass_s * len_s**2, mass_s * len_s**2, mass_s])
        return model.replace(
            body_mass=model.body_mass.at[POLE_BODY].multiply(mass_s),
            body_ipos=model.body_ipos.at[POLE_BODY].multiply(len_s),
            body_inertia=model.body_inertia.at[POLE_BODY].multiply(inertia_s),
            dof_frictionloss=model.dof_frictionloss.at[SLIDER_DOF].multiply(fric_s),
            actuator_gear=model.actuator_gear.at[0, 0].multiply(gain_s),
            dof_damping=model.dof_damping.at[HINGE_DOF].multiply(damp_s),
        )

    def initial_state(self, model, key):
        k1, k2 = jax.random.split(key)
        noise = self.config.init_noise
        qpos = jnp.array([0.0, jnp.pi]) + noise * jax.random.normal(k1, (2,))
        qvel = noise * jax.random.normal(k2, (2,))
        return qpos, qvel, {"last_action": jnp.zeros((self.action_size,))}

    def observe(self, model, data, info):
        x, theta = data.qpos[0], data.qpos[1]
        dep = jnp.stack([x, jnp.cos(theta), jnp.sin(theta), data.qvel[0], data.qvel[1]])
        nominal = _NOMINAL
        rel = jnp.stack(
            [
                model.body_mass[POLE_BODY] / nominal["pole_mass"] - 1.0,
                model.body_ipos[POLE_BODY, 2] / nominal["pole_com"] - 1.0,
                model.dof_frictionloss[SLIDER_DOF] / nominal["cart_friction"] - 1.0,
                model.actuator_gear[0, 0] / nominal["gear"] - 1.0,
                model.dof_damping[HINGE_DOF] / nominal["hinge_damping"] - 1.0,
            ]
        )
        return dep.astype(jnp.float32), jnp.concatenate([dep, rel]).astype(jnp.float32)

    def reward(self, model, data, action, info):
        x, theta = data.qpos[0], data.qpos[1]
        upright = (jnp.cos(theta) + 1.0) / 2.0
        centred = (1.0 + _tolerance_gaussian(x, margin=2.0)) / 2.0
        u = jnp.clip(action[0], -1.0, 1.0)
        small_control = (4.0 + jnp.maximum(1.0 - u**2, 0.0)) / 5.0
        small_velocity = (1.0 + _tolerance_gaussian(data.qvel[1], margin=5.0)) / 2.0
        r = upright * centred * small_control * small_velocity
        return r, {"upright": upright, "centred": centred}

    def unsafe(self, model, data):
        return rail_impact(data.qpos[SLIDER_DOF], data.qvel[SLIDER_DOF], model.jnt_range[SLIDER_DOF, 1],
                           self.config.rail_impact_speed)

    def privileged_from_deployable(self, deployable):
        """The deployable obs followed by zero parameter offsets (= the nominal parameters:
        on a real robot the expert does not know the real ones). numpy or jax, any batch dims."""
        xp = jnp if isinstance(deployable, jax.Array) else np
        d = xp.asarray(deployable, dtype=xp.float32)
        n_dep, n_priv = len(self.deployable_obs_names), len(self.privileged_obs_names)
        if d.shape[-1:] != (n_dep,):
            raise ValueError(f"cartpole: deployable observation must end in size {n_dep}, got shape {d.shape}")
        return xp.concatenate([d, xp.zeros(d.shape[:-1] + (n_priv - n_dep,), xp.float32)], axis=-1)

    def update_info(self, model, data, action, info, key):
        return {"last_action": jnp.clip(action, -1.0, 1.0)}


def _nominal() -> dict[str, float]:
    import mujoco

    m = mujoco.MjModel.from_xml_path(str(XML))
    return {
        "pole_mass": float(m.body_mass[POLE_BODY]),
        "pole_com": float(m.body_ipos[POLE_BODY, 2]),
        "cart_friction": float(m.dof_frictionloss[SLIDER_DOF]),
        "gear": float(m.actuator_gear[0, 0]),
        "hinge_damping": float(m.dof_damping[HINGE_DOF]),
    }


_NOMINAL = _nominal()
