"""The quadruped's `sim-real` adapter: numpy twins of robots/quadruped/task.py for the classic
MuJoCo "real robot". The `Robot` (robots/quadruped/__init__.py) names it as its
`sim_real_adapter`.

The proprioception, reward and fall test use the same formulas as the MJX task (task.py's
functions with numpy). The height scan is a sensor here: `mj_ray` casts straight down
onto the terrain geoms (group 0) of the real model, so a gap's slope shows in it (77 `mj_ray` calls per control step). The previous
action in the observation is the action the planner commanded (updated in `after_tick`); the
gait clock is the simulation time.
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

from simdist.backends.sim_real import SimRealAdapter
from simdist.errors import RobotError
from simdist.robots.quadruped import task as qt

RAY_TOP = 5.0  # rays start this high above the base


class QuadrupedAdapter(SimRealAdapter):
    def __init__(self, robot, env_config=None):
        super().__init__(robot, env_config)
        self._terrain = self.task.terrain
        self._last_action = np.zeros(12)
        self._last_qvel = np.zeros(12)
        self._feet = self.task.foot_geoms
        self._weights = self.config.reward_weights.as_dict()

    @property
    def terrain(self):
        """The terrain of the real robot's floor (a sloped floor when the gap sets `slope`):
        the reward, the fall test and the initial height follow it."""
        return self._terrain

    def load_gapped_model(self, gap):
        # MuJoCo computes the pose of static geoms at compile time, so a sloped floor needs a
        # model compiled with it (setting geom_quat afterwards moves nothing).
        if "slope" not in gap:
            return super().load_gapped_model(gap)
        if self.config.terrain == "rough":
            raise RobotError("the quadruped's 'slope' gap key needs terrain 'flat' or 'slope', not 'rough'")
        cfg = dataclasses.replace(self.config, terrain="slope", slope_deg=float(gap["slope"]))
        model = qt.build_model(cfg)
        self.apply_gap(model, gap)  # gaps.apply_gap sets the same floor quaternion again
        self._terrain = qt.terrain_of(model, cfg)  # the reward and fall test follow the real floor
        return model

    def initial_state(self, model, rng):
        c = self.config
        yaw = rng.uniform(-1.0, 1.0) * c.deploy_yaw_range  # placed facing +x (uphill on a slope gap)
        z = qt.HOME_Z + float(self._terrain.height(np.zeros(2), np))
        qpos = np.concatenate(
            [[0.0, 0.0, z, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)],
             qt.DEFAULT_POSE + c.init_joint_noise * rng.uniform(-1, 1, 12)]
        )  # fmt: skip
        qvel = np.concatenate([c.init_vel_noise * rng.standard_normal(6), np.zeros(12)])
        return qpos, qvel

    def reset_memory(self):
        self._last_action = np.zeros(12)
        self._last_qvel = np.zeros(12)

    def ctrl(self, model, data, action):
        target = qt.DEFAULT_POSE + qt.ACTION_SCALE * np.clip(action, -1.0, 1.0)
        return np.clip(target, model.actuator_ctrlrange[:, 0], model.actuator_ctrlrange[:, 1])

    def command(self):
        return np.asarray(self.config.deploy_command, np.float32)

    def height_scan(self, model, data) -> np.ndarray:
        q = data.qpos
        yaw = qt.yaw_of(q[3:7], np)
        c, s = np.cos(yaw), np.sin(yaw)
        off = qt.SCAN_OFFSETS
        n = off.shape[0]
        pnt = np.zeros((n, 3))
        pnt[:, 0] = q[0] + c * off[:, 0] - s * off[:, 1]
        pnt[:, 1] = q[1] + s * off[:, 0] + c * off[:, 1]
        pnt[:, 2] = q[2] + RAY_TOP
        down = np.array([0.0, 0.0, -1.0])
        group = np.array([1, 0, 0, 0, 0, 0], np.uint8)  # terrain geoms only
        gid = np.zeros(1, np.int32)
        dist = np.array([mujoco.mj_ray(model, data, pnt[i], down, group, 1, -1, gid) for i in range(n)])
        h = np.where(dist >= 0, pnt[:, 2] - dist, 0.0)
        return np.clip(h - q[2], -1.0, 1.0)

    def observe(self, model, data):
        p = qt.proprio(data.qpos, data.qvel, data.time, self._last_action, self.command(), np)
        return np.concatenate([p, self.height_scan(model, data)]).astype(np.float32)

    def reward(self, model, data, action):
        r, _ = qt.reward_terms(
            self._terrain, data.qpos, data.qvel, data.time, data.actuator_force, data.geom_xpos[self._feet],
            np.asarray(action, np.float64), self._last_action, self._last_qvel, self.command(), self.config.ctrl_dt, np,
            weights=self._weights,
        )  # fmt: skip
        return float(r)

    def episode_metrics(self, qpos, qvel, commands):
        # Forward progress: displacement along the start heading. Tracking: body-frame
        # velocity against the command, per control tick.
        yaw0 = qt.yaw_of(qpos[0, 3:7], np)
        heading = np.array([np.cos(yaw0), np.sin(yaw0)])
        v = np.stack([qt.quat_rotate_inv(q[3:7], w[0:3], np) for q, w in zip(qpos[1:], qvel[1:])])
        yaw_rate = qvel[1:, 5]
        return {
            "forward_progress_m": float((qpos[-1, :2] - qpos[0, :2]) @ heading),
            "vx_mae": float(np.mean(np.abs(v[:, 0] - commands[:, 0]))),
            "vy_mae": float(np.mean(np.abs(v[:, 1] - commands[:, 1]))),
            "yaw_rate_mae": float(np.mean(np.abs(yaw_rate - commands[:, 2]))),
            "mean_vx": float(np.mean(v[:, 0])),
        }

    def after_tick(self, model, data, commanded):
        self._last_action = np.clip(np.asarray(commanded, np.float64), -1.0, 1.0)
        self._last_qvel = np.array(data.qvel[6:18])

    def safety_fault(self, model, data):
        if bool(qt.fallen(self._terrain, data.qpos, np)):
            return "the robot fell (trunk too low or tilted more than 60 degrees)"
        return None

