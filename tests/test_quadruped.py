"""The quadruped (issue 5): model, terrain height scan, named gaps, MJX env, randomisation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from simdist.backends import make_backend
from simdist.robots import get_robot
from simdist.robots.quadruped import gaps as qg
from simdist.robots.quadruped import task as qt

from tests.conftest import array_fields as _array_fields

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def robot():
    return get_robot("quadruped")


@pytest.fixture(scope="module")
def rollout(robot):
    """One compiled reset and one compiled 110-step rollout of 4 envs, shared by the MJX tests.
    Env 3 starts upside down (a fall)."""
    from simdist.envs import MjxEnv

    cfg = qt.QuadrupedEnvConfig(randomize=False, episode_length=150, command_resample_steps=20,
                                zero_command_probability=0.0)  # fmt: skip
    env = MjxEnv(qt.QuadrupedTask(cfg))
    s0 = jax.jit(lambda k: env.batch_reset(k, 4))(jax.random.key(0))
    qpos = s0.data.qpos.at[3, 3:7].set(jnp.array([0.0, 1.0, 0.0, 0.0]))
    s0 = s0.replace(data=s0.data.replace(qpos=qpos))

    def body(st, _):
        st = env.batch_step(st, jnp.zeros((4, 12)))
        return st, (st.data.qpos, st.deployable_obs, st.privileged_obs, st.info["command"], st.terminated, st.step_count)

    s, traj = jax.jit(lambda st: jax.lax.scan(body, st, None, length=110))(s0)
    return env, s0, s, jax.tree.map(np.asarray, traj)


def test_model_matches_the_spec():
    m = qt.build_model(qt.QuadrupedEnvConfig())
    assert m.nu == 12 and m.nq == 19 and m.opt.timestep in (0.004, 0.005)
    assert 14.0 < m.body_subtreemass[qt.TRUNK_BODY] < 16.0
    assert [m.joint(j).id for j in qt.JOINTS] == list(range(1, 13))
    np.testing.assert_allclose(m.key("home").qpos[7:], qt.DEFAULT_POSE)
    np.testing.assert_allclose(m.actuator_gainprm[:, 0], 25.0)
    np.testing.assert_allclose(m.actuator_biasprm[:, 2], -0.5)
    np.testing.assert_allclose(np.abs(m.actuator_forcerange[:, 1]), [23.7, 23.7, 45.43] * 4)
    # Only feet and trunk collide, and only with the ground.
    colliding = {m.geom(i).name for i in range(m.ngeom) if m.geom_contype[i] or m.geom_conaffinity[i]}
    assert colliding == {"floor", "trunk", *qt.FOOT_GEOMS_NAMES}
    for a in ("trunk", *qt.FOOT_GEOMS_NAMES):
        for b in ("trunk", *qt.FOOT_GEOMS_NAMES):
            ga, gb = m.geom(a).id, m.geom(b).id
            assert not (m.geom_contype[ga] & m.geom_conaffinity[gb]), (a, b)


def test_stands_under_pd_in_classic_mujoco():
    m = qt.build_model(qt.QuadrupedEnvConfig())
    d = mujoco.MjData(m)
    mujoco.mj_resetDataKeyframe(m, d, m.key("home").id)
    for _ in range(int(2.0 / m.opt.timestep)):
        mujoco.mj_step(m, d)
        assert 0.22 < d.qpos[2] < 0.32
    assert 0.24 < d.qpos[2] < 0.29  # settled near the nominal 0.27 m
    g = qt.quat_rotate_inv(d.qpos[3:7], np.array([0.0, 0.0, -1.0]), np)
    assert g[2] < -0.99 and d.ncon == 4  # level, on its four feet


def test_mjx_env_stands_shapes_commands_and_falls(rollout):
    env, s0, s, (qpos, dep, priv, cmd, term, count) = rollout
    assert env.n_substeps == 5 and env.deployable_obs_size == 127 and env.privileged_obs_size == 139
    assert dep.shape == (110, 4, 127) and priv.shape == (110, 4, 139)
    assert np.isfinite(dep).all() and np.isfinite(priv).all()
    np.testing.assert_array_equal(priv[..., :127], dep)
    # Standing under PD with zero actions for 2 s (envs 0-2): height and orientation hold.
    for t in range(100):
        for e in range(3):
            assert 0.22 < qpos[t, e, 2] < 0.32
            assert dep[t, e, 8] < -0.99  # gravity z in the body frame
    assert not term[:, :3].any()
    # Command of size 3, in range, resampled every 20 steps and constant in between.
    assert cmd.shape == (110, 4, 3) and env.task.command_size == 3
    np.testing.assert_array_equal(dep[..., 47:50], cmd)
    assert (np.abs(np.diff(cmd[:, 0], axis=0)).sum(-1) > 0).sum() == 5  # steps 20, 40, ..., 100
    assert np.all(cmd[:, :, 0] >= -0.5) and np.all(cmd[:, :, 0] <= 1.5)
    # Height scan on flat ground: minus the base height, everywhere.
    np.testing.assert_allclose(dep[50, 0, 50:], -qpos[50, 0, 2], atol=1e-5)
    # Feet carry the robot's weight in the privileged observation.
    assert abs(priv[50, 0, 127:131].sum() * 100 - 15.0 * 9.81) < 15.0
    # The upside-down env terminates at once and auto-resets.
    assert term[0, 3] and count[0, 3] == 0 and not term[1:, 3].any()


def _ray_scan(m, d, qpos):
    off = qt.SCAN_OFFSETS
    yaw = qt.yaw_of(qpos[3:7], np)
    out = []
    for ox, oy in off:
        p = np.array([qpos[0] + np.cos(yaw) * ox - np.sin(yaw) * oy, qpos[1] + np.sin(yaw) * ox + np.cos(yaw) * oy, 3.0])
        dist = mujoco.mj_ray(m, d, p, np.array([0.0, 0.0, -1.0]), np.array([1, 0, 0, 0, 0, 0], np.uint8), 1, -1,
                             np.zeros(1, np.int32))  # fmt: skip
        out.append(3.0 - dist - qpos[2])
    return np.clip(np.array(out), -1, 1)


@pytest.mark.parametrize("terrain", ["slope", "rough"])
def test_height_scan_matches_mj_ray(terrain):
    cfg = qt.QuadrupedEnvConfig(terrain=terrain, slope_deg=12.0, rough_height=0.1)
    m = qt.build_model(cfg)
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    ter = qt.terrain_of(m, cfg)
    rng = np.random.default_rng(0)
    for _ in range(5):
        yaw = rng.uniform(-np.pi, np.pi)
        qpos = np.concatenate([[*rng.uniform(-3, 3, 2), 0.5], [np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], qt.DEFAULT_POSE])
        want = _ray_scan(m, d, qpos)
        np.testing.assert_allclose(qt.height_scan(ter, qpos, np), want, atol=1e-6)
        np.testing.assert_allclose(np.asarray(qt.height_scan(ter, jnp.asarray(qpos, jnp.float32))), want, atol=2e-5)
        assert np.ptp(want) > 0.02  # the terrain is not flat under the scan


def test_randomised_incline_tilts_the_floor_and_the_terrain_follows():
    """`slope_range_deg`: each sampled model tilts only the floor, within the range; MJX poses
    the floor as MuJoCo compiles that incline; height scan, reward and fall test use it."""
    from simdist._mjx import mjx

    cfg = qt.QuadrupedEnvConfig(slope_range_deg=6.0)
    task = qt.QuadrupedTask(cfg)
    assert ("geom_quat", (task.floor_geom,)) in {(p.field, p.index) for p in task.randomized_params()}
    model = mjx.put_model(task.mj_model())
    kin = jax.jit(mjx.kinematics)
    angles = []
    for seed in range(4):
        rnd = task.randomize(model, jax.random.key(seed))
        changed = np.argwhere(np.asarray(rnd.geom_quat) != np.asarray(model.geom_quat))
        assert set(changed[:, 0]) <= {task.floor_geom}
        ter = task.terrain_for(rnd)
        deg = float(np.rad2deg(np.arctan(float(ter.slope_tan))))
        assert -6.0 <= deg <= 6.0
        angles.append(deg)
        # MuJoCo compiled with that incline: same floor pose as MJX's kinematics, same scan.
        m = qt.build_model(qt.QuadrupedEnvConfig(terrain="slope", slope_deg=deg))
        d = mujoco.MjData(m)
        mujoco.mj_forward(m, d)
        dx = kin(rnd, mjx.make_data(rnd))
        np.testing.assert_allclose(np.asarray(dx.geom_xmat[task.floor_geom]), d.geom_xmat[task.floor_geom].reshape(3, 3),
                                   atol=1e-6)  # fmt: skip
        qpos = np.concatenate([[1.5, -0.7, 0.5], [np.cos(0.3), 0, 0, np.sin(0.3)], qt.DEFAULT_POSE])
        np.testing.assert_allclose(np.asarray(qt.height_scan(ter, jnp.asarray(qpos, jnp.float32))),
                                   _ray_scan(m, d, qpos), atol=2e-5)  # fmt: skip
        # A robot standing nominally high above the tilted ground has not fallen; below it, it has.
        z = float(ter.height(jnp.array([1.5, -0.7]))) + qt.HOME_Z
        assert not bool(qt.fallen(ter, jnp.asarray(qpos).at[2].set(z)))
        assert bool(qt.fallen(ter, jnp.asarray(qpos).at[2].set(z - 0.2)))
    assert np.ptp(angles) > 2.0  # the inclines differ between episodes
    with pytest.raises(ValueError, match="terrain 'flat'"):
        qt.QuadrupedTask(qt.QuadrupedEnvConfig(slope_range_deg=6.0, terrain="rough"))


def _arrays(m):
    out = {}
    for name in dir(m):
        if name.startswith("_"):
            continue
        try:
            v = getattr(m, name)
        except Exception:
            continue
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number):
            out[name] = v.copy()
    return out


def _expected_fields(m, gap):
    exp = set()
    ground = [m.geom(n).id for n in ("floor",)]
    feet = [m.geom(n).id for n in qg.FOOT_GEOMS]
    if "friction" in gap:
        exp |= {("geom_friction", (g, 0)) for g in ground + feet}
    if "slope" in gap:
        exp |= {("geom_quat", (ground[0], i)) for i in (0, 2)} | {("geom_aabb", None), ("geom_rbound", None), ("bvh_aabb", None), ("geom_sameframe", None)}  # derived by the compiler
    if "floor_softness" in gap:
        exp.add(("geom_solref", (ground[0], 0)))
    if "floor_damping" in gap:
        exp.add(("geom_solref", (ground[0], 1)))
    if gap.get("payload_kg", 0):
        b = m.body("trunk").id
        exp |= {("body_mass", (b,))} | {("body_ipos", (b, i)) for i in range(3)} | {("body_inertia", (b, i)) for i in range(3)}
    if "motor_strength" in gap:
        exp |= {("actuator_gainprm", (a, 0)) for a in range(12)} | {("actuator_forcerange", (a, i)) for a in range(12) for i in range(2)}
        exp |= {("actuator_biasprm", (a, i)) for a in range(12) for i in (1, 2)}
    return exp


@pytest.mark.parametrize("name", sorted(qg.GAPS))
def test_each_named_gap_changes_what_it_claims(robot, name):
    gap = qg.GAPS[name]
    nominal = qt.build_model(qt.QuadrupedEnvConfig())
    with make_backend("sim-real", robot, name) as b:
        b.reset(seed=0)
        m = b.probe().model
        assert b.latency == gap.get("latency", 0)
        exp = _expected_fields(nominal, gap)
        base, new = _arrays(nominal), _arrays(m)
        for field, arr in new.items():
            if arr.shape != base[field].shape:
                continue
            for idx in zip(*np.nonzero(arr != base[field])):
                idx = tuple(int(i) for i in idx)
                assert (field, idx) in exp or (field, None) in exp, f"{name} changed unclaimed {field}{idx}"
        for field, idx in exp:
            if idx is not None:
                assert new[field][idx] != base[field][idx], (name, field, idx)
        if "friction" in gap:
            assert m.geom_friction[m.geom("floor").id, 0] == pytest.approx(gap["friction"])
        if "motor_strength" in gap:
            np.testing.assert_allclose(m.actuator_forcerange, nominal.actuator_forcerange * gap["motor_strength"])
            np.testing.assert_allclose(m.actuator_gainprm[:, 0], 25.0 * gap["motor_strength"])
        if gap.get("payload_kg"):
            tb = m.body("trunk").id
            assert m.body_mass[tb] == pytest.approx(nominal.body_mass[tb] + gap["payload_kg"])
            com_shift = (m.body_ipos[tb] - nominal.body_ipos[tb]) * m.body_mass[tb] / gap["payload_kg"]
            np.testing.assert_allclose(com_shift, [gap["payload_x"], gap["payload_y"], qg.PAYLOAD_HEIGHT], atol=1e-9)
        if "slope" in gap:  # the floor really is tilted: the height scan shows the incline
            d = mujoco.MjData(m)
            mujoco.mj_forward(m, d)
            assert d.geom_xmat[0, 8] == pytest.approx(np.cos(np.deg2rad(gap["slope"])))
        if "floor_softness" in gap:  # contacts of the standing robot use the ground's solref
            obs = None
            for _ in range(5):
                obs = b.step(np.zeros(12))
            d = b._data  # test instrumentation: the contact parameters of the simulator
            assert d.ncon >= 4
            np.testing.assert_allclose(d.contact.solref[: d.ncon, 0], 0.02 * gap["floor_softness"], rtol=1e-2)
            assert obs is not None
    for key, v in gap.items():
        if key in ("friction", "floor_softness", "floor_damping", "motor_strength"):
            assert v != 1.0


def _standing_height(robot, gap, steps=200):
    """Trunk height after `steps` control steps (4 s) of the zero action, and whether it fell."""
    with make_backend("sim-real", robot, gap) as b:
        b.reset(seed=0)
        for _ in range(steps):
            b.step(np.zeros(12))
            if b.done():
                break
        return float(b.probe().true_state()[0][2]), b.done()


def test_foam_sinks_the_standing_robot_without_felling_it(robot):
    rigid, rigid_fell = _standing_height(robot, "none")
    foam, foam_fell = _standing_height(robot, "foam")
    assert not rigid_fell and not foam_fell  # a robot standing still on foam is not a fall
    assert 0.01 < rigid - foam < 0.04, (rigid, foam)  # it sinks centimetres, as into memory foam


def test_latency_gap_delays_the_action_by_one_step(robot):
    with make_backend("sim-real", robot, "latency") as b:
        b.reset(seed=0)
        p = b.probe()
        b.step(np.ones(12))
        np.testing.assert_allclose(p.ctrl, qt.DEFAULT_POSE, atol=1e-12)  # still the zero action
        b.step(np.zeros(12))
        np.testing.assert_allclose(p.ctrl, np.clip(qt.DEFAULT_POSE + qt.ACTION_SCALE, *p.model.actuator_ctrlrange.T))


def test_restarting_from_a_state_forgets_the_previous_action(robot):
    """The observation's previous-action entries start at zero after reset and after the
    probe's set_state, whatever was commanded before."""
    i = qt.PROPRIO_NAMES.index("last_action_FL_hip")
    with make_backend("sim-real", robot, "none") as b:
        obs = b.reset(seed=0)
        assert np.all(obs[i:i + 12] == 0)
        obs = b.step(0.5 * np.ones(12))
        np.testing.assert_allclose(obs[i:i + 12], 0.5)
        d = b.mj_data
        obs = b.probe().set_state(d.qpos.copy(), d.qvel.copy())
        assert np.all(obs[i:i + 12] == 0)
        obs = b.reset(seed=1)
        assert np.all(obs[i:i + 12] == 0)


def test_sim_real_observation_matches_the_task(robot):
    """The numpy adapter gives the MJX task's deployable observation for the same state."""
    from simdist._mjx import mjx

    task = qt.QuadrupedTask(qt.QuadrupedEnvConfig(randomize=False))
    with make_backend("sim-real", robot, "none") as b:
        b.reset(seed=3)
        for i in range(10):
            obs = b.step(0.3 * np.sin(np.arange(12) + i))
        d = b.mj_data
        mx = mjx.put_model(b.probe().model)
        dx = mjx.put_data(b.probe().model, d)
        info = {"last_action": jnp.asarray(b.adapter._last_action), "command": jnp.asarray(b.command())}
        dep, _ = task.observe(mx, dx, info)
        np.testing.assert_allclose(np.asarray(dep), obs, atol=1e-5)


def test_randomisation_touches_only_declared_fields(robot):
    from simdist._mjx import mjx

    task = qt.QuadrupedTask(qt.QuadrupedEnvConfig())
    model = mjx.put_model(task.mj_model())
    base = _array_fields(model)
    claimed = {(p.field, p.index) for p in task.randomized_params()}
    seen = set()
    for seed in range(3):
        new = _array_fields(task.randomize(model, jax.random.key(seed)))
        for name, arr in new.items():
            for idx in np.argwhere(arr != base[name]):
                hit = [c for c in claimed if c[0] == name and tuple(idx[: len(c[1])]) == c[1]]
                assert hit, f"randomisation changed undeclared {name}{tuple(idx)}"
                seen.update(hit)
        for p in task.randomized_params():
            if p.low is None:
                continue
            ratio = float(new[p.field][p.index] / base[p.field][p.index])
            assert p.low - 1e-5 <= ratio <= p.high + 1e-5, p.name
    assert seen == claimed
    assert set(task.randomized_fields()) == {
        "geom_friction", "body_mass", "body_ipos", "actuator_gainprm", "actuator_biasprm",
        "dof_frictionloss", "dof_damping",
    }  # fmt: skip


def test_presets_and_world_model_layout(robot):
    for p in ("tiny", "default", "paper"):
        e, dcfg = robot.expert_config(p), robot.distill_config(p)
        assert isinstance(e.env, qt.QuadrupedEnvConfig) and robot.data_config(p).robot == "quadruped"
        assert dcfg.model.height_scan_shape == (qt.SCAN_ROWS, qt.SCAN_COLS)
        assert dcfg.model.obs_size == 127 and dcfg.model.command_size == 3 and dcfg.model.action_size == 12
        assert dcfg.model.bc_target == "relabelled" and dcfg.model.prior_context  # the shipped recipe
    names = qt.QuadrupedTask.deployable_obs_names
    assert names[-qt.SCAN_ROWS * qt.SCAN_COLS :] == qt.SCAN_NAMES  # the scan is LAST, row-major
    task = robot.make_task()
    priv = task.privileged_from_deployable(np.zeros((2, 127), np.float32))
    assert priv.shape == (2, 139) and isinstance(priv, np.ndarray)


def test_episode_metrics_measure_progress_along_the_start_heading(robot):
    """Forward progress is the displacement along the start heading; the tracking errors are
    the body-frame velocity against the command, per control tick."""
    from simdist.robots.quadruped.sim_real import QuadrupedAdapter

    ad = QuadrupedAdapter(robot)
    yaw = np.deg2rad(30.0)
    quat = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
    T = 50
    heading = np.array([np.cos(yaw), np.sin(yaw)])
    qpos = np.zeros((T + 1, 19))
    qpos[:, 3:7] = quat
    qpos[:, :2] = np.linspace(0.0, 1.0, T + 1)[:, None] * heading + np.array([0.0, 0.3]) * np.arange(T + 1)[:, None] / T
    qvel = np.zeros((T + 1, 18))
    qvel[:, :2] = 0.4 * heading  # 0.4 m/s forward in the body frame
    qvel[:, 5] = 0.1
    m = ad.episode_metrics(qpos, qvel, np.tile([0.5, 0.0, 0.0], (T, 1)))
    sideways = np.array([0.0, 0.3]) @ heading
    assert m["forward_progress_m"] == pytest.approx(1.0 + sideways, abs=1e-9)
    assert m["vx_mae"] == pytest.approx(0.1, abs=1e-9)
    assert m["vy_mae"] == pytest.approx(0.0, abs=1e-9)
    assert m["yaw_rate_mae"] == pytest.approx(0.1, abs=1e-9)


def test_deploy_reports_progress_tracking_and_falls(robot, monkeypatch):
    """Deploy reports the quadruped's metrics per episode from the probe: standing still
    under the zero action makes no progress and misses the 0.5 m/s command by 0.5 m/s; a robot
    started upside down is a fall (a safety stop)."""
    import dataclasses

    import simdist.pipelines.deploy as dep
    from simdist.planning.controller import ZeroController

    cfg = dep.DeployConfig(robot="quadruped", episodes=2, episode_length=40, gap="none")
    res = dep.deploy(cfg, controller=ZeroController(12), show_progress=False)
    assert res.safety_stops == 0
    for ep in res.episodes:
        assert abs(ep.metrics["forward_progress_m"]) < 0.05
        assert ep.metrics["vx_mae"] == pytest.approx(0.5, abs=0.06)
    assert res.metrics["forward_progress_m"]["n"] == 2
    assert set(res.to_dict()["metrics"]) >= {"forward_progress_m", "vx_mae", "yaw_rate_mae"}

    backends = []
    monkeypatch.setattr(dep, "make_backend", lambda *a, **k: backends.append(make_backend(*a, **k)) or backends[-1])

    class UpsideDown(ZeroController):
        def reset(self, obs, command):  # test instrumentation: flip the robot over at the start
            probe = backends[-1].probe()
            q, v = probe.true_state()
            q[3:7] = [0.0, 1.0, 0.0, 0.0]
            probe.set_state(q, np.zeros_like(v))

    res = dep.deploy(dataclasses.replace(cfg, episodes=1), controller=UpsideDown(12), show_progress=False)
    assert res.safety_stops == 1 and res.steps[0] < 40
    assert "fell" in res.episodes[0].safety_stop


def test_reward_weights_are_a_config_field_that_set_reaches(robot):
    from simdist.config import to_dict, with_overrides
    from simdist.rl.config import ExpertConfig

    base = robot.expert_config("default")
    assert base.env.reward_weights.as_dict() == qt.REWARD_WEIGHTS  # the reference's, unchanged
    assert qt.REWARD_WEIGHTS["torques"] == -2e-4 and qt.REWARD_WEIGHTS["tracking_lin_vel"] == 1.5
    cfg = with_overrides(base, {"env.reward_weights.tracking_lin_vel": 3.0})
    assert cfg.env.reward_weights.tracking_lin_vel == 3.0 and ExpertConfig.from_dict(to_dict(cfg)) == cfg
    old = to_dict(base)
    del old["env"]["reward_weights"]  # a run written before the field existed loads with the defaults
    assert ExpertConfig.from_dict(old) == base

    def rewards(env):
        with make_backend("sim-real", robot, "none", env_config=env) as b:
            b.reset(seed=2)
            for i in range(5):
                b.step(0.3 * np.sin(np.arange(12) + i))
            return np.array(b.probe().rewards)

    same = dataclasses.replace(base.env, reward_weights=qt.QuadrupedRewardWeights(**qt.REWARD_WEIGHTS))
    np.testing.assert_array_equal(rewards(same), rewards(base.env))
    doubled = rewards(cfg.env) - rewards(base.env)  # the tracking term's weight went 1.5 -> 3
    assert np.all(doubled > 0)
