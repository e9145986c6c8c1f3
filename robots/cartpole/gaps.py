"""The cartpole's reality gaps: its physical gap keys, its named gaps, and how a gap changes
the classic MuJoCo model of the `sim-real` robot.

Physical keys are multipliers of the nominal MJCF value, applied the way the training
randomisation (`CartpoleTask.randomize`) applies them to the MJX model, so that a gap inside
the randomisation ranges is a model the expert saw in training and one outside is not:

- `pole_mass`: `body_mass` of the pole; its inertia scales with it;
- `pole_length`: moves the pole's centre of mass (`body_ipos`) and scales its inertia as a
  uniform rod's: I_perp ~ m L^2, I_axial ~ m. The pole geom is scaled too, for rendering
  only (contacts are disabled in cartpole.xml);
- `cart_friction`: the slider's `dof_frictionloss` (dry friction of the cart on the rail);
- `motor_gain`: the motor's `actuator_gear` (force per unit of action);
- `hinge_damping`: the hinge's `dof_damping`.

Training randomisation ranges (CartpoleEnvConfig): pole_mass 0.7-1.3, pole_length 0.85-1.15,
cart_friction 0.5-2, motor_gain 0.85-1.15, hinge_damping 0.5-2.

Nominal plant (cartpole.xml): cart 1 kg, pole 0.1 kg with centre of mass 0.3 m from the hinge,
motor force = 10 N x action with action in [-1, 1], rail +-1.8 m, 100 Hz physics, 50 Hz control.
"""

from __future__ import annotations

from typing import Mapping

import mujoco
import numpy as np

from simdist.backends.battery import Shift
from simdist.backends.gaps import GapKey, multiplier
from simdist.robots.cartpole.task import HINGE_DOF, POLE_BODY, SLIDER_DOF

KEYS: dict[str, GapKey] = {
    "pole_mass": multiplier("pole_mass", "pole mass (inertia follows)"),
    "pole_length": multiplier("pole_length", "pole length: centre of mass and inertia"),
    "cart_friction": multiplier("cart_friction", "dry friction of the cart on the rail", allow_zero=True),
    "motor_gain": multiplier("motor_gain", "motor force per unit action (actuator gear)"),
    "hinge_damping": multiplier("hinge_damping", "viscous damping of the pole hinge", allow_zero=True),
}

GAPS: dict[str, dict[str, float]] = {
    "none": {},
    # The demo's gap: every physical change lies outside the training ranges (the pole's
    # swing energy needed is 2.6x nominal, the motor 40 % weaker: 6 N peak on a 1.2 kg
    # cart+pole), plus one control step of actuation latency and a little sensor noise. Still
    # feasible: a model-based energy-pumping + LQR controller swings it up in ~2.5 s and
    # balances it (tests/test_backends.py::test_default_gap_is_feasible); it also does with
    # hinge_damping=3 added, which is left out to keep the default gap's story simple.
    "default": {
        "pole_mass": 2.0,
        "pole_length": 1.3,
        "cart_friction": 3.0,
        "motor_gain": 0.6,
        "latency": 1,
        "obs_noise": 0.01,
    },
    "heavy-pole": {"pole_mass": 2.5},
    "long-pole": {"pole_length": 1.4},
    "weak-motor": {"motor_gain": 0.6},
    "sticky-cart": {"cart_friction": 10.0},
    "stiff-hinge": {"hinge_damping": 3.0},
    "latency": {"latency": 2},
    "noisy-sensors": {"obs_noise": 0.05},
}

# The random-gap battery (`simdist gaps`): each key leaves its training range with
# probability 0.4, to a band on either side. The bands stop where the default gap's values
# are (pole_mass 2, pole_length 1.3, cart_friction 3, motor_gain 0.6, latency 1, noise 0.01)
# or a little beyond: hard gaps that a model-based controller can still solve.
BATTERY: tuple[Shift, ...] = (
    Shift("pole_mass", train=(0.7, 1.3), below=(0.4, 0.7), above=(1.3, 2.2)),
    Shift("pole_length", train=(0.85, 1.15), below=(0.7, 0.85), above=(1.15, 1.35)),
    Shift("cart_friction", train=(0.5, 2.0), below=(0.1, 0.5), above=(2.0, 4.0)),
    Shift("motor_gain", train=(0.85, 1.15), below=(0.6, 0.85), above=(1.15, 1.5)),
    Shift("hinge_damping", train=(0.5, 2.0), below=(0.1, 0.5), above=(2.0, 4.0)),
    Shift("latency", train=(0, 0), above=(1, 1), log=False, integer=True),
    Shift("obs_noise", train=(0.0, 0.0), above=(0.002, 0.02), log=False),
)

NOTES: dict[str, str] = {
    "none": "the training simulator's nominal model",
    "default": "the demo's gap: heavier, longer pole, sticky rail, 40 % weaker motor, 20 ms latency, sensor noise",
    "heavy-pole": "pole 2.5x as heavy (training saw 0.7-1.3x)",
    "long-pole": "pole 1.4x as long (training saw 0.85-1.15x)",
    "weak-motor": "motor force 0.6x (training saw 0.85-1.15x)",
    "sticky-cart": "dry rail friction 10x, 0.5 N (training saw 0.5-2x)",
    "stiff-hinge": "hinge damping 3x: drains the light pole's swing energy (training saw 0.5-2x)",
    "latency": "actions arrive 2 control steps (40 ms) late",
    "noisy-sensors": "Gaussian noise of std 0.05 on every observation entry",
}


def apply_gap(mj_model: mujoco.MjModel, gap: Mapping[str, float]) -> None:
    """Apply the gap's physical keys to a freshly loaded nominal model, in place.

    Generic keys (latency, obs_noise) are the backend's and are ignored here. Derived model
    constants (`dof_invweight0`, ...) stay nominal, as in the MJX training randomisation.
    """
    mass_s = float(gap.get("pole_mass", 1.0))
    len_s = float(gap.get("pole_length", 1.0))
    m = mj_model
    m.body_mass[POLE_BODY] *= mass_s
    m.body_ipos[POLE_BODY] *= len_s
    m.body_inertia[POLE_BODY] *= np.array([mass_s * len_s**2, mass_s * len_s**2, mass_s])
    m.dof_frictionloss[SLIDER_DOF] *= float(gap.get("cart_friction", 1.0))
    m.actuator_gear[0, 0] *= float(gap.get("motor_gain", 1.0))
    m.dof_damping[HINGE_DOF] *= float(gap.get("hinge_damping", 1.0))
    if len_s != 1.0:  # the pole geom, for rendering: capsule from the hinge along +z
        g = m.geom("pole").id
        m.geom_pos[g] *= len_s
        m.geom_size[g, 1] *= len_s
        m.geom_rbound[g] = m.geom_size[g, 1] + m.geom_size[g, 0]
