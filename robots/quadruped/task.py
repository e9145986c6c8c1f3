"""Quadruped velocity tracking: a Go2-class robot follows (vx, vy, yaw-rate) commands at 50 Hz.

Model: quadruped.xml (about 15 kg, 12 PD position servos, physics 4 ms x 5 = 20 ms control).
The terrain is set at load time from the config (`terrain`): "flat" (the MJCF's plane),
"slope" (the plane tilted about y by `slope_deg`, uphill towards +x) or "rough" (a MuJoCo
heightfield of `rough_size_m` square over the flat plane, heights 0..`rough_height`, drawn
once from `rough_seed`). MJX collides spheres and capsules with heightfields.

Height scan: `SCAN_ROWS x SCAN_COLS` (11 x 7) points on a 0.1 m grid around the base, aligned
with its yaw (rows along the heading, -0.5..0.5 m; columns sideways, -0.3..0.3 m), each entry
`terrain_height(point) - base_z`, clipped to [-1, 1]. It is computed analytically from the
terrain description (plane, tilted plane, or MuJoCo's own triangulation of the heightfield
grid, which is what `mj_ray` and the collision see), not by ray casting; the tests check it
against `mujoco.mj_ray`.

Observations
- deployable (127): base linear velocity (3) and angular velocity (3) in the body frame,
  gravity in the body frame (3), joint positions relative to the default pose (12), joint
  velocities (12), previous action (12), gait clock sin/cos (2), command (3), then the height
  scan (77), row-major, LAST (where the world model's height-scan CNN expects it).
- privileged (139): the deployable ones, then foot contact normal forces / 100 N (4), and
  the randomised physics as offsets from nominal: friction, payload mass (kg), shift of the
  trunk's centre of mass in x and y (m), Kp scale - 1, Kd scale - 1, joint friction scale - 1, joint damping
  scale - 1.

Actions: 12 joint target offsets in [-1, 1]; target = default pose + ACTION_SCALE * action,
clipped to the joint ranges. Joint order per leg FL, FR, RL, RR: hip abduction, hip
flexion (thigh), knee (calf).

Reward: the reference's terms, each multiplied by ctrl_dt (weights: QuadrupedRewardWeights,
the env config's `reward_weights`).
Termination: base below 0.15 m above the terrain, or tilted more than 60 degrees.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from simdist._mjx import mjx
from simdist.envs.task import EnvConfig, RandomizedParam, Task
from simdist.errors import ConfigError

XML = Path(__file__).with_name("quadruped.xml")

LEGS = ("FL", "FR", "RL", "RR")
JOINTS = tuple(f"{leg}_{j}_joint" for leg in LEGS for j in ("hip", "thigh", "calf"))
DEFAULT_POSE = np.array([0.1, 0.8, -1.5, -0.1, 0.8, -1.5, 0.1, 1.0, -1.5, -0.1, 1.0, -1.5])
HOME_Z = 0.28  # keyframe base height; it settles at about 0.27 under PD
NOMINAL_HEIGHT = 0.27
ACTION_SCALE = 0.25
FOOT_RADIUS = 0.022
TRUNK_BODY = 1
FOOT_GEOMS_NAMES = tuple(f"{leg}_foot" for leg in LEGS)

# Height scan grid, in the base's yaw frame: rows along x (forward), columns along y (left).
SCAN_ROWS, SCAN_COLS = 11, 7
SCAN_X = np.linspace(-0.5, 0.5, SCAN_ROWS)
SCAN_Y = np.linspace(-0.3, 0.3, SCAN_COLS)
SCAN_OFFSETS = np.stack(np.meshgrid(SCAN_X, SCAN_Y, indexing="ij"), -1).reshape(-1, 2)  # row-major

# Trot: FL and RR together, FR and RL half a period later. A foot is in stance while its
# phase is in [0, 0.5).
GAIT_FREQ = 2.0
GAIT_OFFSETS = np.array([0.0, 0.5, 0.5, 0.0])
SWING_HEIGHT = 0.09
MIN_BASE_HEIGHT = 0.15
MAX_TILT_COS = 0.5  # cos 60 degrees

@dataclasses.dataclass(frozen=True)
class QuadrupedRewardWeights:
    """The weight of each reward term (the reference's), before the factor ctrl_dt. A field of
    the env config, so `--set env.reward_weights.torques=-1e-4` reaches it."""

    tracking_lin_vel: float = 1.5
    tracking_ang_vel: float = 0.75
    lin_vel_z: float = -2.0
    ang_vel_xy: float = -0.05
    orientation: float = -4.0
    base_height: float = -10.0
    torques: float = -2e-4
    joint_acc: float = -2.5e-7
    action_rate: float = -0.01
    hip_deviation: float = -0.25
    trot_gait: float = 0.05
    swing_height: float = 0.2

    def as_dict(self) -> dict[str, float]:
        """term -> weight, in the order the reward sums them."""
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}


#: The default weights as a dict (term -> weight).
REWARD_WEIGHTS = QuadrupedRewardWeights().as_dict()
TRACKING_SIGMA = 0.25

PROPRIO_NAMES = (
    ("base_vx", "base_vy", "base_vz", "base_wx", "base_wy", "base_wz", "gravity_x", "gravity_y", "gravity_z")
    + tuple(f"q_{j[:-6]}" for j in JOINTS)
    + tuple(f"dq_{j[:-6]}" for j in JOINTS)
    + tuple(f"last_action_{j[:-6]}" for j in JOINTS)
    + ("gait_sin", "gait_cos", "cmd_vx", "cmd_vy", "cmd_wz")
)
SCAN_NAMES = tuple(f"scan_{r}_{c}" for r in range(SCAN_ROWS) for c in range(SCAN_COLS))
PRIV_EXTRA_NAMES = (
    "force_FL", "force_FR", "force_RL", "force_RR",
    "friction_offset", "payload_kg", "trunk_com_dx", "trunk_com_dy",
    "kp_offset", "kd_offset", "joint_friction_offset", "joint_damping_offset",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class QuadrupedEnvConfig(EnvConfig):
    episode_length: int = 1000  # 20 s
    ctrl_dt: float = 0.02
    randomize: bool = True
    terrain: str = "flat"  # flat | slope | rough
    slope_deg: float = 10.0  # terrain "slope": uphill towards +x
    rough_height: float = 0.06  # terrain "rough": heights 0..rough_height (m)
    rough_size_m: float = 10.0  # side of the square heightfield, centred at the origin
    rough_resolution_m: float = 0.1
    rough_seed: int = 0
    # Randomised incline: each episode tilts the floor by U(-a, a) degrees about y (uphill
    # towards +x when positive; the robot's heading is random, so any direction relative to
    # it). 0 = off. Needs terrain "flat"; the height scan, reward and fall test follow it.
    slope_range_deg: float = 0.0
    # Domain randomisation.
    friction_range: tuple[float, float] = (0.2, 1.2)  # foot-ground friction (absolute, nominal 1)
    payload_range: tuple[float, float] = (-1.0, 3.0)  # kg added to the trunk
    payload_com_range: float = 0.05  # +- m, trunk centre of mass shift in x and y
    kp_range: tuple[float, float] = (0.9, 1.1)
    kd_range: tuple[float, float] = (0.9, 1.1)
    joint_friction_range: tuple[float, float] = (0.5, 1.5)
    joint_damping_range: tuple[float, float] = (0.5, 2.0)
    init_joint_noise: float = 0.1
    init_vel_noise: float = 0.1
    # Commands, resampled every `command_resample_steps` control steps.
    vx_range: tuple[float, float] = (-0.5, 1.5)
    vy_range: tuple[float, float] = (-0.5, 0.5)
    yaw_rate_range: tuple[float, float] = (-1.0, 1.0)
    command_resample_steps: int = 250  # 5 s
    zero_command_probability: float = 0.1
    # The fixed command of the sim-real robot (deploy).
    deploy_command: tuple[float, float, float] = (0.5, 0.0, 0.0)
    deploy_yaw_range: float = 0.1  # +- rad: the sim-real robot starts facing +x, up a slope gap
    # The reward's term weights (the reference's by default).
    reward_weights: QuadrupedRewardWeights = QuadrupedRewardWeights()


# ---- terrain -----------------------------------------------------------------------------
def _rough_heights(cfg: QuadrupedEnvConfig) -> np.ndarray:
    """A smooth random height grid in [0, 1] (nrow x ncol), from the config's seed."""
    n = int(round(cfg.rough_size_m / cfg.rough_resolution_m)) + 1
    rng = np.random.default_rng(cfg.rough_seed)
    h = rng.uniform(0.0, 1.0, (n, n))
    k = np.array([1.0, 2.0, 1.0]) / 4.0  # one pass of a 3x3 binomial blur: smooth but rough
    h = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, h)
    h = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, h)
    # Flat start pad around the origin, so every episode starts on level ground.
    x = np.linspace(-cfg.rough_size_m / 2, cfg.rough_size_m / 2, n)
    near = (np.abs(x)[:, None] < 0.4) & (np.abs(x)[None, :] < 0.4)
    h[near] = 0.0
    return (h - h.min()) / max(h.max() - h.min(), 1e-9)


@dataclasses.dataclass(frozen=True)
class Terrain:
    """An analytic description of the ground: height(x, y), numpy or jax."""

    kind: str
    slope_tan: float = 0.0
    hf: np.ndarray | None = None  # (nrow, ncol) heights in metres, row = y, col = x
    half: tuple[float, float] = (0.0, 0.0)  # heightfield half-sizes (x, y)

    def height(self, xy, xp=jnp):
        x, y = xy[..., 0], xy[..., 1]
        if self.kind == "flat":
            return xp.zeros_like(x)
        if self.kind == "slope":
            return x * self.slope_tan
        # MuJoCo's heightfield: vertices on a regular grid, every cell split into two
        # triangles along the diagonal (c, r)-(c+1, r+1) (engine_ray.c). Outside it, the plane.
        nrow, ncol = self.hf.shape
        hx, hy = self.half
        gx = (x + hx) / (2 * hx) * (ncol - 1)
        gy = (y + hy) / (2 * hy) * (nrow - 1)
        inside = (gx >= 0) & (gx <= ncol - 1) & (gy >= 0) & (gy <= nrow - 1)
        c = xp.clip(xp.floor(gx), 0, ncol - 2).astype(np.int32)
        r = xp.clip(xp.floor(gy), 0, nrow - 2).astype(np.int32)
        fx = xp.clip(gx - c, 0.0, 1.0)
        fy = xp.clip(gy - r, 0.0, 1.0)
        hf = xp.asarray(self.hf)
        h00, h10, h01, h11 = hf[r, c], hf[r, c + 1], hf[r + 1, c], hf[r + 1, c + 1]
        upper = h00 + fx * (h10 - h00) + fy * (h11 - h10)  # triangle (00, 10, 11): fx >= fy
        lower = h00 + fy * (h01 - h00) + fx * (h11 - h01)  # triangle (00, 01, 11)
        h = xp.where(fx >= fy, upper, lower)
        return xp.where(inside, xp.maximum(h, 0.0), 0.0)


def build_model(cfg: QuadrupedEnvConfig) -> mujoco.MjModel:
    """quadruped.xml with the config's terrain."""
    spec = mujoco.MjSpec.from_file(str(XML))
    if cfg.terrain == "slope":
        a = -np.deg2rad(cfg.slope_deg) / 2.0  # about y by -angle: +x goes uphill
        spec.geom("floor").quat = [np.cos(a), 0.0, np.sin(a), 0.0]
    elif cfg.terrain == "rough":
        hf = _rough_heights(cfg)
        n = hf.shape[0]
        half = cfg.rough_size_m / 2.0
        field = spec.add_hfield()
        field.name = "rough"
        field.size = [half, half, cfg.rough_height, 0.1]
        field.nrow = n
        field.ncol = n
        field.userdata = hf.astype(np.float32).ravel().tolist()
        floor = spec.geom("floor")
        g = spec.worldbody.add_geom()
        g.name = "rough"
        g.type = mujoco.mjtGeom.mjGEOM_HFIELD
        g.hfieldname = "rough"
        g.contype, g.conaffinity, g.group, g.condim = 1, 1, 0, 3
        g.friction = floor.friction
        g.rgba = [0.35, 0.4, 0.45, 1.0]
    elif cfg.terrain != "flat":
        raise ConfigError(f"unknown terrain '{cfg.terrain}'; terrains: flat, slope, rough")
    return spec.compile()


def terrain_of(mj_model: mujoco.MjModel, cfg: QuadrupedEnvConfig) -> Terrain:
    if cfg.terrain == "slope":
        return Terrain("slope", slope_tan=float(np.tan(np.deg2rad(cfg.slope_deg))))
    if cfg.terrain == "rough":
        h = mj_model.hfield("rough")
        nrow, ncol = int(h.nrow[0]), int(h.ncol[0])
        adr = int(mj_model.hfield_adr[h.id])
        data = np.array(mj_model.hfield_data[adr : adr + nrow * ncol]).reshape(nrow, ncol)
        size = mj_model.hfield_size[h.id]
        return Terrain("rough", hf=(data * size[2]).astype(np.float32), half=(float(size[0]), float(size[1])))
    return Terrain("flat")


# ---- kinematics and the formulas shared with the sim-real backend (numpy or jax) --------
def quat_rotate_inv(q, v, xp=jnp):
    """Rotate world vector(s) v into the frame of unit quaternion q = (w, x, y, z)."""
    w, u = q[0], q[1:]
    uv = xp.cross(u, v)
    return v - 2.0 * w * uv + 2.0 * xp.cross(u, uv)


def yaw_of(q, xp=jnp):
    w, x, y, z = q[0], q[1], q[2], q[3]
    return xp.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def height_scan(terrain: Terrain, qpos, xp=jnp):
    yaw = yaw_of(qpos[3:7], xp)
    c, s = xp.cos(yaw), xp.sin(yaw)
    off = xp.asarray(SCAN_OFFSETS)
    pts = xp.stack([qpos[0] + c * off[:, 0] - s * off[:, 1], qpos[1] + s * off[:, 0] + c * off[:, 1]], -1)
    return xp.clip(terrain.height(pts, xp) - qpos[2], -1.0, 1.0)


def gait_phases(time, xp=jnp):
    return xp.mod(time * GAIT_FREQ + xp.asarray(GAIT_OFFSETS), 1.0)


def proprio(qpos, qvel, time, last_action, command, xp=jnp):
    q = qpos[3:7]
    v = quat_rotate_inv(q, qvel[0:3], xp)  # free joint: linear velocity in the world frame
    w = qvel[3:6]  # angular velocity already in the body frame
    g = quat_rotate_inv(q, xp.asarray([0.0, 0.0, -1.0]), xp)
    clock = 2 * np.pi * GAIT_FREQ * time
    return xp.concatenate(
        [v, w, g, qpos[7:19] - xp.asarray(DEFAULT_POSE), qvel[6:18], last_action,
         xp.stack([xp.sin(clock), xp.cos(clock)]), command]
    )  # fmt: skip


def reward_terms(terrain, qpos, qvel, time, torques, foot_pos, action, last_action, last_qvel, command, dt, xp=jnp,
                 weights=None):
    """(total reward, terms); `weights` maps term -> weight (None: REWARD_WEIGHTS)."""
    q = qpos[3:7]
    v = quat_rotate_inv(q, qvel[0:3], xp)
    w = qvel[3:6]
    g = quat_rotate_inv(q, xp.asarray([0.0, 0.0, -1.0]), xp)
    base_h = qpos[2] - terrain.height(qpos[0:2], xp)
    foot_h = foot_pos[:, 2] - FOOT_RADIUS - terrain.height(foot_pos[:, :2], xp)
    contact = foot_h < 0.01
    stance = gait_phases(time, xp) < 0.5
    swing = ~stance
    a = xp.clip(action, -1.0, 1.0)
    hips = xp.asarray([0, 3, 6, 9])
    terms = {
        "tracking_lin_vel": xp.exp(-xp.sum((command[:2] - v[:2]) ** 2) / TRACKING_SIGMA),
        "tracking_ang_vel": xp.exp(-((command[2] - w[2]) ** 2) / TRACKING_SIGMA),
        "lin_vel_z": v[2] ** 2,
        "ang_vel_xy": xp.sum(w[:2] ** 2),
        "orientation": xp.sum(g[:2] ** 2),
        "base_height": (base_h - NOMINAL_HEIGHT) ** 2,
        "torques": xp.sum(torques**2),
        "joint_acc": xp.sum(((qvel[6:18] - last_qvel) / dt) ** 2),
        "action_rate": xp.sum((a - last_action) ** 2),
        "hip_deviation": xp.sum((qpos[7:19][hips] - xp.asarray(DEFAULT_POSE)[hips]) ** 2),
        "trot_gait": xp.mean((contact == stance).astype(np.float32)),
        "swing_height": xp.sum(swing * xp.exp(-((foot_h - SWING_HEIGHT) ** 2) / 0.02**2)) / 2.0,
    }
    weights = REWARD_WEIGHTS if weights is None else weights
    total = sum(weights[k] * terms[k] for k in weights) * dt
    return total, terms


def fallen(terrain, qpos, xp=jnp):
    g = quat_rotate_inv(qpos[3:7], xp.asarray([0.0, 0.0, -1.0]), xp)
    low = qpos[2] - terrain.height(qpos[0:2], xp) < MIN_BASE_HEIGHT
    return low | (g[2] > -MAX_TILT_COS)


def sample_command(key, cfg: QuadrupedEnvConfig):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    u = lambda k, r: jax.random.uniform(k, (), minval=r[0], maxval=r[1])  # noqa: E731
    cmd = jnp.stack([u(k1, cfg.vx_range), u(k2, cfg.vy_range), u(k3, cfg.yaw_rate_range)])
    return jnp.where(jax.random.uniform(k4) < cfg.zero_command_probability, 0.0, cmd)


class QuadrupedTask(Task):
    name = "quadruped"
    xml_path = XML
    action_size = 12
    command_size = 3
    deployable_obs_names = PROPRIO_NAMES + SCAN_NAMES
    privileged_obs_names = deployable_obs_names + PRIV_EXTRA_NAMES
    height_scan_shape = (SCAN_ROWS, SCAN_COLS)
    config: QuadrupedEnvConfig

    def __init__(self, config: QuadrupedEnvConfig):
        super().__init__(config)
        m = self.mj_model()
        self.terrain = terrain_of(m, config)
        self.foot_geoms = np.array([m.geom(n).id for n in FOOT_GEOMS_NAMES])
        self.ground_geoms = np.array([m.geom(n).id for n in ("floor", "rough") if _has_geom(m, n)])
        self.friction_geoms = np.concatenate([self.foot_geoms, self.ground_geoms])
        self.floor_geom = int(m.geom("floor").id)
        self.random_slope = config.slope_range_deg > 0
        if self.random_slope and config.terrain != "flat":
            raise ConfigError(f"slope_range_deg needs terrain 'flat', not '{config.terrain}'")
        self._nominal = {
            "trunk_mass": float(m.body_mass[TRUNK_BODY]),
            "trunk_ipos": np.array(m.body_ipos[TRUNK_BODY]),
            "kp": float(m.actuator_gainprm[0, 0]),
            "kd": float(-m.actuator_biasprm[0, 2]),
            "frictionloss": float(m.dof_frictionloss[6]),
            "damping": float(m.dof_damping[6]),
            "friction": float(m.geom_friction[self.foot_geoms[0], 0]),
        }

    def mj_model(self) -> mujoco.MjModel:
        return build_model(self.config)

    def terrain_for(self, model) -> Terrain:
        """The terrain of this (possibly randomised) model: the config's, or with a randomised
        incline, the plane tilted as the model's floor is (traced under jit)."""
        if not self.random_slope:
            return self.terrain
        q = model.geom_quat[self.floor_geom]
        return Terrain("slope", slope_tan=jnp.tan(-2.0 * jnp.arctan2(q[2], q[0])))

    # ---- randomisation -------------------------------------------------------------------
    def randomized_params(self) -> tuple[RandomizedParam, ...]:
        c = self.config
        n = self._nominal
        out = [RandomizedParam(f"friction[{g}]", "geom_friction", (int(g), 0), c.friction_range[0] / n["friction"],
                               c.friction_range[1] / n["friction"]) for g in self.friction_geoms]  # fmt: skip
        out.append(RandomizedParam("payload", "body_mass", (TRUNK_BODY,), 1 + c.payload_range[0] / n["trunk_mass"],
                                   1 + c.payload_range[1] / n["trunk_mass"]))  # fmt: skip
        out.append(RandomizedParam("payload_com", "body_ipos", (TRUNK_BODY,)))
        for i in range(12):
            out.append(RandomizedParam(f"kp[{i}]", "actuator_gainprm", (i, 0), *c.kp_range))
            out.append(RandomizedParam(f"kp_bias[{i}]", "actuator_biasprm", (i, 1), *c.kp_range))
            out.append(RandomizedParam(f"kd[{i}]", "actuator_biasprm", (i, 2), *c.kd_range))
        for d in range(6, 18):
            out.append(RandomizedParam(f"joint_friction[{d}]", "dof_frictionloss", (d,), *c.joint_friction_range))
            out.append(RandomizedParam(f"joint_damping[{d}]", "dof_damping", (d,), *c.joint_damping_range))
        if self.random_slope:
            out.append(RandomizedParam("slope", "geom_quat", (self.floor_geom,)))
        return tuple(out)

    def randomize(self, model: mjx.Model, key: jax.Array) -> mjx.Model:
        c = self.config
        k = jax.random.split(key, 7)
        u = lambda kk, r, shape=(): jax.random.uniform(kk, shape, minval=r[0], maxval=r[1])  # noqa: E731
        fr = u(k[0], c.friction_range)
        payload = u(k[1], c.payload_range)
        com = u(k[2], (-c.payload_com_range, c.payload_com_range), (2,))
        kp_s, kd_s = u(k[3], c.kp_range), u(k[4], c.kd_range)
        jf_s, jd_s = u(k[5], c.joint_friction_range), u(k[6], c.joint_damping_range)
        m0 = self._nominal["trunk_mass"]
        # The payload is a point mass at (com_x, com_y) relative to the nominal trunk centre.
        ipos = model.body_ipos[TRUNK_BODY]
        new_ipos = ipos + jnp.concatenate([com * jnp.maximum(payload, 0.0) / (m0 + payload), jnp.zeros(1)])
        extra = {}
        if self.random_slope:
            # Its own key, so the other parameters draw exactly what they drew before inclines.
            k_slope = jax.random.fold_in(key, 7)
            half = -jnp.deg2rad(u(k_slope, (-c.slope_range_deg, c.slope_range_deg))) / 2.0  # about y: +x uphill
            quat = jnp.stack([jnp.cos(half), 0.0, jnp.sin(half), 0.0])
            extra["geom_quat"] = model.geom_quat.at[self.floor_geom].set(quat)
        return model.replace(
            **extra,
            geom_friction=model.geom_friction.at[self.friction_geoms, 0].set(fr),
            body_mass=model.body_mass.at[TRUNK_BODY].add(payload),
            body_ipos=model.body_ipos.at[TRUNK_BODY].set(new_ipos),
            actuator_gainprm=model.actuator_gainprm.at[:, 0].multiply(kp_s),
            actuator_biasprm=model.actuator_biasprm.at[:, 1].multiply(kp_s).at[:, 2].multiply(kd_s),
            dof_frictionloss=model.dof_frictionloss.at[6:].multiply(jf_s),
            dof_damping=model.dof_damping.at[6:].multiply(jd_s),
        )

    # ---- episode -------------------------------------------------------------------------
    def initial_state(self, model, key):
        c = self.config
        k1, k2, k3, k4 = jax.random.split(key, 4)
        yaw = jax.random.uniform(k1, (), minval=-np.pi, maxval=np.pi)
        qpos = jnp.concatenate(
            [jnp.array([0.0, 0.0, HOME_Z + float(self.terrain.height(np.zeros(2), np))]),
             jnp.stack([jnp.cos(yaw / 2), 0.0, 0.0, jnp.sin(yaw / 2)]),
             jnp.asarray(DEFAULT_POSE) + c.init_joint_noise * jax.random.uniform(k2, (12,), minval=-1, maxval=1)]
        )  # fmt: skip
        qvel = jnp.concatenate([c.init_vel_noise * jax.random.normal(k3, (6,)), jnp.zeros(12)])
        info = {
            "last_action": jnp.zeros((12,)),
            "last_qvel": jnp.zeros((12,)),
            "command": sample_command(k4, c),
            "command_steps": jnp.zeros((), jnp.int32),
        }
        return qpos, qvel, info

    def ctrl(self, model, data, action, info):
        target = jnp.asarray(DEFAULT_POSE) + ACTION_SCALE * jnp.clip(action, -1.0, 1.0)
        return jnp.clip(target, model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1])

    def foot_forces(self, model, data):
        """Normal contact force on each foot (N), summed over its contacts (pyramidal cone)."""
        con = data._impl.contact
        efc = data._impl.efc_force
        if con.geom.shape[0] == 0:
            return jnp.zeros(4)
        edges = 4  # condim 3, pyramidal: the normal force is the sum of the 4 edge forces
        idx = con.efc_address[:, None] + jnp.arange(edges)[None]
        fn = jnp.where(con.efc_address >= 0, efc[jnp.clip(idx, 0, efc.shape[0] - 1)].sum(-1), 0.0)
        is_foot = (con.geom[:, :, None] == jnp.asarray(self.foot_geoms)[None, None]).any(1)  # (ncon, 4)
        return (is_foot * fn[:, None]).sum(0)

    def observe(self, model, data, info):
        dep = jnp.concatenate(
            [proprio(data.qpos, data.qvel, data.time, info["last_action"], info["command"]),
             height_scan(self.terrain_for(model), data.qpos)]
        )  # fmt: skip
        n = self._nominal
        m0 = n["trunk_mass"]
        payload = model.body_mass[TRUNK_BODY] - m0
        com = model.body_ipos[TRUNK_BODY, :2] - n["trunk_ipos"][:2]  # the trunk's centre of mass shift
        extra = jnp.concatenate(
            [self.foot_forces(model, data) / 100.0,
             jnp.stack([model.geom_friction[self.foot_geoms[0], 0] / n["friction"] - 1.0, payload]),
             com,
             jnp.stack([model.actuator_gainprm[0, 0] / n["kp"] - 1.0,
                        -model.actuator_biasprm[0, 2] / n["kd"] - 1.0,
                        model.dof_frictionloss[6] / n["frictionloss"] - 1.0,
                        model.dof_damping[6] / n["damping"] - 1.0])]
        )  # fmt: skip
        return dep.astype(jnp.float32), jnp.concatenate([dep, extra]).astype(jnp.float32)

    def reward(self, model, data, action, info):
        return reward_terms(
            self.terrain_for(model), data.qpos, data.qvel, data.time, data.actuator_force,
            data.geom_xpos[self.foot_geoms], action, info["last_action"], info["last_qvel"], info["command"],
            self.config.ctrl_dt, weights=self.config.reward_weights.as_dict(),
        )  # fmt: skip

    def terminated(self, model, data, info):
        return super().terminated(model, data, info) | fallen(self.terrain_for(model), data.qpos)

    def command(self, info):
        return info["command"].astype(jnp.float32)

    def update_info(self, model, data, action, info, key):
        steps = info["command_steps"] + 1
        resample = steps >= self.config.command_resample_steps
        cmd = jnp.where(resample, sample_command(key, self.config), info["command"])
        return {
            "last_action": jnp.clip(action, -1.0, 1.0),
            "last_qvel": data.qvel[6:18],
            "command": cmd,
            "command_steps": jnp.where(resample, 0, steps),
        }

    def privileged_from_deployable(self, deployable):
        """Deployable obs, then nominal privileged entries: each foot carrying a quarter of the
        robot's weight, zero parameter offsets. numpy or jax, any batch dims."""
        xp = jnp if isinstance(deployable, jax.Array) else np
        d = xp.asarray(deployable, dtype=xp.float32)
        n_dep = len(self.deployable_obs_names)
        if d.shape[-1:] != (n_dep,):
            raise ValueError(f"quadruped: deployable observation must end in size {n_dep}, got shape {d.shape}")
        extra = np.zeros(len(PRIV_EXTRA_NAMES), np.float32)
        extra[:4] = 15.0 * 9.81 / 4 / 100.0
        extra = xp.broadcast_to(xp.asarray(extra), d.shape[:-1] + extra.shape)
        return xp.concatenate([d, extra], axis=-1)


def _has_geom(m: mujoco.MjModel, name: str) -> bool:
    return mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, name) >= 0
