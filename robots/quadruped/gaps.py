"""The quadruped's reality gaps: its physical gap keys, its named gaps (after the paper's
real-world tests), and how a gap changes the classic MuJoCo model of the `sim-real` robot.

Physical keys (absent = nominal):

- `friction`: multiplier of the tangential friction of the feet and the ground geoms
  (`geom_friction[:, 0]`; MuJoCo takes the larger of the two, so both move together, as in
  the training randomisation of `QuadrupedTask.randomize`);
- `slope`: incline of the floor plane in degrees, uphill towards +x (the floor's
  `geom_quat`; an absolute angle, replacing the terrain's own incline). MuJoCo fixes the
  pose of static geoms at compile time, so the sim-real adapter compiles the model with the
  slope (`QuadrupedAdapter.load_gapped_model`); `apply_gap` alone only sets `geom_quat`;
- `floor_softness`: multiplier of the ground's contact time constant (`geom_solref[:, 0]`,
  nominal 0.02 s): larger is softer, the foot sinks in;
- `floor_damping`: multiplier of the ground's contact damping ratio (`geom_solref[:, 1]`);
  the feet have `solmix` 0.001, so the ground's solref governs foot contacts;
- `payload_kg`: a point mass added to the trunk (kg, >= 0): `body_mass` and the centre of
  mass `body_ipos` of the trunk change, its inertia (at the new centre of mass) too;
- `payload_x`, `payload_y`: where the payload sits, relative to the trunk's nominal centre
  of mass (m; 6 cm above it);
- `motor_strength`: multiplier of every actuator's torque: Kp, Kd (`actuator_gainprm`,
  `actuator_biasprm`) and the torque limit (`actuator_forcerange`), so the torque is
  exactly scaled everywhere.

Training randomisation (QuadrupedEnvConfig): friction 0.2-1.2 absolute (nominal 1), payload
-1..3 kg with its centre of mass +-5 cm, Kp and Kd x0.9-1.1, joint friction x0.5-1.5,
joint damping x0.5-2; no latency, rigid ground, flat terrain unless configured.
"""

from __future__ import annotations

from typing import Mapping

import mujoco
import numpy as np

from simdist.backends.battery import Shift
from simdist.backends.gaps import GapKey, multiplier

GROUND_GEOMS = ("floor", "rough")
FOOT_GEOMS = ("FL_foot", "FR_foot", "RL_foot", "RR_foot")
TRUNK = "trunk"
PAYLOAD_HEIGHT = 0.06


def _slope_ok(v: float) -> str | None:
    return None if -30.0 <= v <= 30.0 else "must be between -30 and 30 degrees"


def _any(v: float) -> str | None:
    return None if abs(v) <= 0.3 else "must be within +-0.3 m"


def _nonneg(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


KEYS: dict[str, GapKey] = {
    "friction": multiplier("friction", "friction of the feet on the ground"),
    "slope": GapKey("slope", "incline of the floor in degrees, uphill towards +x", check=_slope_ok),
    "floor_softness": multiplier("floor_softness", "ground contact time constant (larger = softer)"),
    "floor_damping": multiplier("floor_damping", "ground contact damping ratio"),
    "payload_kg": GapKey("payload_kg", "point mass added to the trunk, kg", check=_nonneg),
    "payload_x": GapKey("payload_x", "payload position ahead of the trunk's centre of mass, m", check=_any),
    "payload_y": GapKey("payload_y", "payload position left of the trunk's centre of mass, m", check=_any),
    "motor_strength": multiplier("motor_strength", "every motor's torque (Kp, Kd and torque limit)"),
}

GAPS: dict[str, dict[str, float]] = {
    "none": {},
    # The paper's slippery slope: an incline the expert never saw, with friction below the
    # training range (0.2-1.2). 4 degrees: a robot standing still holds (tan 4 deg = 0.07 <
    # 0.15), a walking one slips. (10 degrees made the flat-ground expert fall even at
    # friction 1; see docs/quadruped.md.)
    "slippery-slope": {"slope": 4.0, "friction": 0.15},
    # What `simdist deploy --robot quadruped` gets without --gap: the headline experiment.
    "default": {"slope": 4.0, "friction": 0.15},
    # Memory foam: a soft ground (3x time constant: 0.06 s); the standing robot sinks about
    # 2 cm more than on rigid ground and the expert still walks, as the Go2 does on the paper's
    # foam. (5x with damping ratio 2 sank it 17 cm: it tripped the fall test standing still.)
    "foam": {"floor_softness": 3.0},
    "payload": {"payload_kg": 3.0, "payload_x": 0.1, "payload_y": 0.05},
    "weak-motors": {"motor_strength": 0.7},
    "latency": {"latency": 1},
}

# The random-gap battery (`simdist gaps`): each key leaves its training range with
# probability 0.4. The bands reach about as far as the named gaps above (friction 0.15,
# slope 4 degrees, foam 3x, +3 kg payload, motors x0.7, one step of latency).
BATTERY: tuple[Shift, ...] = (
    Shift("friction", train=(0.2, 1.2), below=(0.12, 0.2)),
    Shift("slope", train=(0.0, 0.0), below=(-5.0, -2.0), above=(2.0, 5.0), log=False),
    Shift("floor_softness", train=(1.0, 1.0), above=(1.5, 3.0)),
    Shift("payload_kg", train=(0.0, 3.0), above=(3.0, 4.0), log=False),
    Shift("motor_strength", train=(0.9, 1.1), below=(0.65, 0.9)),
    Shift("latency", train=(0, 0), above=(1, 1), log=False, integer=True),
)

NOTES: dict[str, str] = {
    "none": "the training simulator's nominal model",
    "default": "the same as slippery-slope (deploy's default gap)",
    "slippery-slope": "4 degree incline (uphill +x), friction 0.15 (training saw flat ground, 0.2-1.2)",
    "foam": "soft ground: contact time constant 0.06 s, the robot sinks ~2 cm (training saw rigid ground)",
    "payload": "+3 kg 10 cm ahead and 5 cm left of the centre of mass (training saw -1..3 kg within 5 cm)",
    "weak-motors": "every motor's torque x0.7 (training saw gains x0.9-1.1)",
    "latency": "actions arrive one control step (20 ms) late",
}


def _ids(m: mujoco.MjModel, names, obj=mujoco.mjtObj.mjOBJ_GEOM) -> list[int]:
    return [i for i in (mujoco.mj_name2id(m, obj, n) for n in names) if i >= 0]


def apply_gap(mj_model: mujoco.MjModel, gap: Mapping[str, float]) -> None:
    """Apply the gap's physical keys to a freshly loaded nominal model, in place.

    Generic keys (latency, obs_noise) are the backend's and are ignored here. Derived model
    constants stay as compiled, as in the MJX training randomisation.
    """
    m = mj_model
    ground = _ids(m, GROUND_GEOMS)
    feet = _ids(m, FOOT_GEOMS)
    if "friction" in gap:
        m.geom_friction[ground + feet, 0] *= float(gap["friction"])
    if "slope" in gap:
        a = -np.deg2rad(float(gap["slope"])) / 2.0
        m.geom_quat[m.geom("floor").id] = [np.cos(a), 0.0, np.sin(a), 0.0]
    if "floor_softness" in gap:
        m.geom_solref[ground, 0] *= float(gap["floor_softness"])
    if "floor_damping" in gap:
        m.geom_solref[ground, 1] *= float(gap["floor_damping"])
    mp = float(gap.get("payload_kg", 0.0))
    if mp > 0:
        b = m.body(TRUNK).id
        m0 = float(m.body_mass[b])
        c0 = np.array(m.body_ipos[b])
        p = c0 + np.array([float(gap.get("payload_x", 0.0)), float(gap.get("payload_y", 0.0)), PAYLOAD_HEIGHT])
        c1 = (m0 * c0 + mp * p) / (m0 + mp)
        # Inertia about the new centre of mass, in the trunk's inertial frame (its principal
        # axes are the body axes: body_iquat is identity for the trunk), diagonal part only.
        d0, d1 = c0 - c1, p - c1
        shift = lambda mass, d: mass * (np.dot(d, d) - d * d)  # noqa: E731
        m.body_inertia[b] = m.body_inertia[b] + shift(m0, d0) + shift(mp, d1)
        m.body_mass[b] = m0 + mp
        m.body_ipos[b] = c1
    if "motor_strength" in gap:
        s = float(gap["motor_strength"])
        m.actuator_gainprm[:, 0] *= s
        m.actuator_biasprm[:, 1:3] *= s
        m.actuator_forcerange[:] *= s
