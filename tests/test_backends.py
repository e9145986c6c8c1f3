"""Robot backends: the interface contract, the cartpole's reality gaps, and `sim-real`
(classic MuJoCo) against the MJX training env."""

from __future__ import annotations

import copy
import dataclasses
import json
import time

import mujoco
import numpy as np
import pytest

from simdist.backends import (
    DummyRobot,
    RobotSpec,
    SimRealRobot,
    describe_gaps,
    make_backend,
    parse_gap,
    resolve_gap,
)
from simdist.errors import RobotError
from simdist.robots.cartpole import gaps as cp_gaps
from simdist.robots.cartpole import task as cp_task

NOMINAL = mujoco.MjModel.from_xml_path(str(cp_task.XML))
KEYS = "cart_friction, hinge_damping, latency, motor_gain, obs_noise, pole_length, pole_mass"


def _backend(gap="none", mode="lock-step", seed=0, **kw) -> SimRealRobot:
    b = make_backend("sim-real", "cartpole", gap, mode=mode, seed=seed, **kw)
    b.connect()
    b.reset()
    return b


class FakeClock:
    """A monotonic clock that only moves when the caller sleeps or advances it."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += max(s, 0.0)


# ---- gaps ------------------------------------------------------------------------------
def _model_arrays(m) -> dict[str, np.ndarray]:
    out = {}
    for name in dir(m):
        if name.startswith("_"):
            continue
        v = getattr(m, name)
        if isinstance(v, np.ndarray) and np.issubdtype(v.dtype, np.number):
            out[name] = v.copy()
    return out


def _expected_changes(gap) -> dict[tuple[str, tuple], float]:
    """(field, index) -> expected ratio to nominal, for the gap's physical keys."""
    P, S, H = cp_task.POLE_BODY, cp_task.SLIDER_DOF, cp_task.HINGE_DOF
    g = NOMINAL.geom("pole").id
    ms, ls = gap.get("pole_mass", 1.0), gap.get("pole_length", 1.0)
    exp = {}
    if "pole_mass" in gap or "pole_length" in gap:
        exp[("body_mass", (P,))] = ms
        exp[("body_ipos", (P, 2))] = ls
        exp[("body_inertia", (P, 0))] = ms * ls**2
        exp[("body_inertia", (P, 1))] = ms * ls**2
        exp[("body_inertia", (P, 2))] = ms
    if "pole_length" in gap:  # the visual pole follows
        exp[("geom_pos", (g, 2))] = ls
        exp[("geom_size", (g, 1))] = ls
        exp[("geom_rbound", (g,))] = None
    if "cart_friction" in gap:
        exp[("dof_frictionloss", (S,))] = gap["cart_friction"]
    if "motor_gain" in gap:
        exp[("actuator_gear", (0, 0))] = gap["motor_gain"]
    if "hinge_damping" in gap:
        exp[("dof_damping", (H,))] = gap["hinge_damping"]
    return exp


@pytest.mark.parametrize("name", sorted(cp_gaps.GAPS))
def test_each_named_gap_changes_what_it_claims(name):
    gap = cp_gaps.GAPS[name]
    b = _backend(name)
    try:
        assert b.gap == gap
        assert b.latency == gap.get("latency", 0) and b.obs_noise == gap.get("obs_noise", 0.0)
        exp = _expected_changes(gap)
        base, new = _model_arrays(NOMINAL), _model_arrays(b.probe().model)
        assert base.keys() == new.keys()
        for field, arr in new.items():
            for idx in zip(*np.nonzero(arr != base[field])):
                assert (field, tuple(int(i) for i in idx)) in exp, f"{name} changed unclaimed {field}{idx}"
        for (field, idx), ratio in exp.items():
            if ratio is not None:
                assert new[field][idx] == pytest.approx(base[field][idx] * ratio, rel=1e-12), (name, field, idx)
    finally:
        b.close()
    # Physical changes are real changes: every non-trivial key moves a field.
    for key, v in gap.items():
        if key in cp_gaps.KEYS:
            assert v != 1.0


def test_default_gap_is_outside_training_ranges_and_has_latency_and_noise():
    cfg = cp_task.CartpoleEnvConfig()
    d = cp_gaps.GAPS["default"]
    for key in ("pole_mass", "pole_length", "cart_friction", "motor_gain"):
        lo, hi = getattr(cfg, f"{key}_range")
        assert not lo <= d[key] <= hi, key
    assert d["latency"] >= 1 and 0 < d["obs_noise"] <= 0.02


def test_apply_gap_matches_the_training_randomisation():
    """A gap applied to the classic model equals the MJX randomisation with the same multipliers."""
    import jax

    from simdist._mjx import mjx

    task = cp_task.CartpoleTask(cp_task.CartpoleEnvConfig())
    mx = mjx.put_model(NOMINAL)
    rnd = task.randomize(mx, jax.random.key(3))
    P, S, H = cp_task.POLE_BODY, cp_task.SLIDER_DOF, cp_task.HINGE_DOF
    ratio = lambda f, i: float(np.asarray(getattr(rnd, f))[i] / getattr(NOMINAL, f)[i])  # noqa: E731
    gap = {
        "pole_mass": ratio("body_mass", (P,)),
        "pole_length": ratio("body_ipos", (P, 2)),
        "cart_friction": ratio("dof_frictionloss", (S,)),
        "motor_gain": ratio("actuator_gear", (0, 0)),
        "hinge_damping": ratio("dof_damping", (H,)),
    }
    m = copy.deepcopy(NOMINAL)
    cp_gaps.apply_gap(m, gap)
    for p in task.randomized_params():
        np.testing.assert_allclose(getattr(m, p.field), np.asarray(getattr(rnd, p.field)), rtol=2e-6, err_msg=p.name)


@pytest.mark.parametrize("latency", [0, 1, 3])
def test_latency_delays_an_impulse_by_exactly_that_many_steps(latency):
    b = _backend({"latency": latency})
    try:
        p = b.probe()
        p.set_state([0.0, np.pi], [0.0, 0.0])
        moved = []
        for k in range(latency + 3):
            b.step([1.0] if k == 0 else [0.0])
            moved.append(abs(p.true_state()[1][0]) > 1e-6)
        assert moved.index(True) == latency  # the cart first moves in control step `latency`
        assert b.stats["stale_ticks"] == 0
    finally:
        b.close()
    # The named `latency` gap delays by its value.
    assert resolve_gap("cartpole", "latency") == {"latency": 2}


def test_obs_noise_has_the_gap_std_and_none_is_exact():
    noisy, clean = _backend("noisy-sensors", seed=4), _backend("none", seed=4)
    try:
        # Same seed: same start state with and without sensor noise.
        np.testing.assert_array_equal(noisy.probe().true_state()[0], clean.probe().true_state()[0])
        diffs, exact = [], []
        rng = np.random.default_rng(0)
        for _ in range(200):
            a = rng.uniform(-1, 1, 1)
            o, oc = noisy.step(a), clean.step(a)
            diffs.append(o - noisy.probe().true_observation())
            exact.append(oc - clean.probe().true_observation())
            # Reading the sensors twice in a tick gives the same reading.
            np.testing.assert_array_equal(noisy.observe(), o)
        diffs = np.array(diffs)
        assert diffs.std() == pytest.approx(0.05, rel=0.1)
        assert abs(diffs.mean()) < 0.01
        assert np.all(diffs.std(axis=0) > 0.03)  # every entry is noisy
        assert np.all(np.array(exact) == 0.0)
    finally:
        noisy.close()
        clean.close()


def test_describe_gaps_one_line_each():
    text = describe_gaps("cartpole")
    assert set(text) == set(cp_gaps.GAPS)
    assert all("\n" not in t for t in text.values())
    assert "pole_mass x2" in text["default"] and "latency 1 step" in text["default"]
    assert text["none"].startswith("no gap")
    # Absolute keys (degrees, kg) are not shown as multipliers.
    q = describe_gaps("quadruped")
    assert "slope = 4" in q["slippery-slope"] and "friction x0.15" in q["slippery-slope"]
    assert "payload_kg = 3" in q["payload"]


# ---- parse_gap -------------------------------------------------------------------------
def test_parse_gap_forms(tmp_path):
    keys = set(KEYS.split(", "))
    G = cp_gaps.GAPS
    assert parse_gap("default", G, keys) == G["default"]
    assert parse_gap("none", G, keys) == {} and parse_gap(None, G, keys) == {}
    got = parse_gap("pole_mass=1.5, latency=2,obs_noise=0.1", G, keys)
    assert got == {"pole_mass": 1.5, "latency": 2, "obs_noise": 0.1} and isinstance(got["latency"], int)
    assert parse_gap("default,latency=2", G, keys) == {**G["default"], "latency": 2}
    assert parse_gap({"motor_gain": 0.5}, G, keys) == {"motor_gain": 0.5}
    f = tmp_path / "gap.json"
    f.write_text(json.dumps({"pole_length": 1.2, "latency": 1}))
    assert parse_gap(str(f), G, keys) == {"pole_length": 1.2, "latency": 1}
    assert parse_gap(f, G, keys) == {"pole_length": 1.2, "latency": 1}
    assert resolve_gap("cartpole", "pole-mass=2") == {"pole_mass": 2.0}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("polemass=2", f"unknown gap key 'polemass' for cartpole; keys: {KEYS}"),
        ("nosuchgap", "unknown gap 'nosuchgap' for cartpole; gaps: default, heavy-pole,"),
        ("latency=1.5", "bad value '1.5' for gap key 'latency' of cartpole: must be a whole number"),
        ("latency=-1", "latency must be >= 0"),
        ("pole_mass=0", "pole_mass must be > 0"),
        ("pole_mass=abc", "expected a number"),
        ("obs_noise=nan", "must be finite"),
        ("default,weak-motor", "only the first item may be a gap name"),
        ("missing.json", "gap file 'missing.json' not found"),
    ],
)
def test_parse_gap_errors_are_one_line(spec, message):
    with pytest.raises(RobotError) as e:
        resolve_gap("cartpole", spec)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_parse_gap_bad_json_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    key = tmp_path / "key.json"
    key.write_text('{"pole_mas": 2}')
    for f, msg in [(bad, "not valid JSON"), (lst, "JSON object"), (key, "unknown gap key 'pole_mas'")]:
        with pytest.raises(RobotError, match=msg) as e:
            resolve_gap("cartpole", str(f))
        assert "\n" not in str(e.value)


# ---- sim-real vs the MJX task ----------------------------------------------------------
@pytest.fixture(scope="module")
def plain_env():
    from simdist.envs import MjxEnv
    from simdist.robots import get_robot

    robot = get_robot("cartpole")
    cfg = dataclasses.replace(robot.env_config_cls(), randomize=False)
    return MjxEnv(robot.make_task(cfg))


def test_none_gap_lock_step_reproduces_the_mjx_env(plain_env):
    """Classic MuJoCo (float64) and MJX (float32) agree to ~2e-6 over 100 steps here; 1e-4 is
    the tolerance, far inside the 1e-3 one would accept."""
    import jax
    import jax.numpy as jnp

    env = plain_env
    s = jax.jit(env.reset)(jax.random.key(0))
    step = jax.jit(env.step)
    acts = np.random.default_rng(0).uniform(-1.5, 1.5, (50, 1)).astype(np.float32)  # some get clamped
    b = _backend("none")
    try:
        p = b.probe()
        o = p.set_state(np.asarray(s.data.qpos, np.float64), np.asarray(s.data.qvel, np.float64))
        np.testing.assert_allclose(o, np.asarray(s.deployable_obs), atol=1e-6)
        for a in acts:
            s = step(s, jnp.asarray(a))
            o = b.step(a)
            np.testing.assert_allclose(o, np.asarray(s.deployable_obs), atol=1e-4)
            # The evaluation probe's reward is the task's reward.
            assert p.ground_truth_reward() == pytest.approx(float(s.reward), abs=1e-5)
        np.testing.assert_allclose(p.true_state()[0], np.asarray(s.data.qpos), atol=1e-4)
        assert b.n_substeps == env.n_substeps == 2
    finally:
        b.close()


@pytest.mark.parametrize("x, xd, action, unsafe", [
    (1.75, 6.0, 1.0, True),    # into the right end stop at 6 m/s
    (-1.7, -7.0, -1.0, True),  # into the left one
    (1.0, 2.0, 0.3, False),    # far from the end
    (1.78, 3.0, 0.5, False),   # a touch below the 4 m/s limit
    (1.75, -6.0, -1.0, False), # fast, but away from the end
])
def test_the_training_sim_knows_the_robots_rail_limit(plain_env, x, xd, action, unsafe):
    """The sim-real robot's safety stop is a failure in the MJX env too, found at the same
    control step, and it costs `safety_penalty` on that step in both."""
    import jax
    import jax.numpy as jnp

    env = plain_env
    s0 = jax.jit(env.reset)(jax.random.key(0))
    data = s0.data.replace(qpos=jnp.array([x, jnp.pi], jnp.float32), qvel=jnp.array([xd, 0.0], jnp.float32))
    s = jax.jit(env._advance)(s0.replace(data=data), jnp.array([action], jnp.float32))[0]
    assert bool(s.terminated) == unsafe and not bool(s.truncated)
    b = _backend("none")
    try:
        p = b.probe()
        p.set_state([x, np.pi], [xd, 0.0])
        b.step([action])
        assert b.done() == unsafe
        penalty = env.task.safety_penalty
        assert penalty == 10.0
        assert p.ground_truth_reward() == pytest.approx(float(s.reward), abs=1e-4)
        assert (float(s.reward) < -penalty + 1.0) == unsafe
    finally:
        b.close()


def test_numpy_observation_and_reward_match_the_task(plain_env):
    import jax
    import jax.numpy as jnp

    env, task = plain_env, plain_env.task
    data0 = jax.jit(env.reset)(jax.random.key(0)).data

    @jax.jit
    @jax.vmap
    def mjx_obs_reward(qpos, qvel, action):
        d = data0.replace(qpos=qpos, qvel=qvel)
        dep, _ = task.observe(env.model, d, {})
        r, _ = task.reward(env.model, d, action, {})
        return dep, r

    rng = np.random.default_rng(1)
    qpos = rng.uniform([-2, -10], [2, 10], (32, 2))
    qvel = rng.uniform(-8, 8, (32, 2))
    action = rng.uniform(-1.5, 1.5, (32, 1))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    deps, rs = mjx_obs_reward(f32(qpos), f32(qvel), f32(action))
    b = _backend("none")
    try:
        adapter, model = b.adapter, b.probe().model
        data = mujoco.MjData(model)
        for i in range(len(qpos)):
            data.qpos[:], data.qvel[:] = qpos[i], qvel[i]
            got = adapter.observe(model, data)
            assert got.dtype == np.float32 and got.shape == (5,)
            np.testing.assert_allclose(got, np.asarray(deps[i]), atol=1e-5)
            assert adapter.reward(model, data, action[i]) == pytest.approx(float(rs[i]), abs=1e-5)
        assert b.spec.obs_names == task.deployable_obs_names
    finally:
        b.close()


def test_reset_is_seeded_and_starts_hanging():
    b = _backend("none")
    try:
        o1, o2, o3 = b.reset(seed=5), b.reset(seed=5), b.reset(seed=6)
        np.testing.assert_array_equal(o1, o2)
        assert not np.array_equal(o1, o3)
        for o in (o1, o3):
            assert o[1] < -0.95  # cos(theta): hanging
        assert b.stats["control_steps"] == 0 and b.probe().episode_return == 0.0
    finally:
        b.close()


# ---- interface contract ----------------------------------------------------------------
def test_actions_are_clamped_to_the_limits():
    a, b = _backend("none", seed=2), _backend("none", seed=2)
    try:
        for _ in range(5):
            oa, ob = a.step([7.5]), b.step(np.array([[1.0]]))
            np.testing.assert_array_equal(oa, ob)
        a.step([-3.0])
        assert a.stats["clamped_actions"] == 6 and b.stats["clamped_actions"] == 0
        with pytest.raises(RobotError, match="action has 2 entries"):
            a.act([0.0, 0.0])
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_stops_the_robot_then_raises(bad):
    b = _backend("none")
    try:
        b.step([0.5])
        assert not b.done()
        with pytest.raises(RobotError, match="non-finite action .* robot stopped"):
            b.step([bad])
        assert b.done() and b.stop_reason == "non-finite action"
        # Stopped: actions are ignored, the motor holds zero until reset.
        b.step([1.0])
        assert b.probe().ctrl[0] == 0.0 and b.stats["ignored_actions"] == 1
        b.stop()
        b.stop()  # idempotent
        b.reset()
        assert not b.done()
        b.step([1.0])
        assert b.probe().ctrl[0] == 1.0
    finally:
        b.close()


def test_context_manager_stops_and_closes_on_exception():
    b = make_backend("sim-real", "cartpole", "latency")
    b.stop()  # callable before connect
    with pytest.raises(ValueError, match="planner blew up"):
        with b:
            b.reset()
            b.step([1.0])
            b.step([1.0])
            raise ValueError("planner blew up")
    assert not b.connected and b.stop_reason == "exception"
    b.stop()
    b.close()  # both idempotent after close
    with pytest.raises(RobotError, match="not connected"):
        b.observe()
    with b:  # reusable
        b.reset()
        b.step([0.0])
    assert not b.connected and b.stop_reason == "context exit"


def test_calls_out_of_order_are_robot_errors():
    b = make_backend("sim-real", "cartpole")
    with pytest.raises(RobotError, match="not connected"):
        b.reset()
    b.connect()
    with pytest.raises(RobotError, match="before reset"):
        b.step([0.0])
    b.close()
    with pytest.raises(RobotError, match="unknown robot backend 'ros'; backends: sim-real, dummy"):
        make_backend("ros", "cartpole")
    with pytest.raises(RobotError, match="unknown robot mode 'fast'; modes: lock-step, real-time"):
        make_backend("sim-real", "cartpole", mode="fast")


def test_safety_limits_stop_the_robot():
    b = _backend("none")
    try:
        p = b.probe()
        p.set_state([1.75, np.pi], [6.0, 0.0])  # heading into the rail end fast
        b.step([1.0])
        b.step([1.0])
        assert b.done() and "rail end" in b.stop_reason
        assert b.stats["safety_stops"] == 1 and b.probe().ctrl[0] == 0.0
        o = b.step([1.0])  # still observable, still holding zero
        assert np.all(np.isfinite(o)) and b.probe().ctrl[0] == 0.0

        p.set_state([0.0, np.pi], [0.0, 1e11])  # a diverged simulation
        assert not b.done()
        b.step([0.0])
        assert b.done() and "diverged" in b.stop_reason

        p.set_state([1.0, np.pi], [2.0, 0.0])  # a gentle touch of the end stop is fine
        for _ in range(30):
            b.step([0.3])
        assert not b.done()
    finally:
        b.close()


def test_spec_and_command():
    b = _backend("none")
    try:
        s = b.spec
        assert s == RobotSpec("cartpole", 0.02, 1, -1.0, 1.0, cp_task.CartpoleTask.deployable_obs_names, 5)
        assert s.command_size == 0 and b.command().shape == (0,)
        with pytest.raises(ValueError):
            s.action_low[0] = 3.0  # read-only
        assert json.loads(json.dumps(s.to_dict()))["obs_size"] == 5
    finally:
        b.close()


def test_control_steps_are_cheap():
    b = _backend("default")
    try:
        t = time.perf_counter()
        for i in range(500):
            b.step([np.sin(i / 10)])
        rate = 500 / (time.perf_counter() - t)
        st = b.stats
        print(f"sim-real cartpole: {rate:.0f} control steps/s through step(), "
              f"{st['control_steps_per_s']:.0f} physics+sensing only")
        assert st["control_steps"] == 500 and st["sim_time_s"] == pytest.approx(10.0)
        assert rate > 1000  # two physics substeps each; ~15-20 k/s measured on 2 cores
    finally:
        b.close()


# ---- real-time mode --------------------------------------------------------------------
def test_real_time_semantics_with_a_fake_clock():
    """On-time actions reproduce lock-step exactly; a late one leaves the robot on the
    previous action for the ticks that passed."""
    dt = 0.02
    acts = np.random.default_rng(3).uniform(-1, 1, (12, 1))
    ref = _backend("default", seed=9)
    clock = FakeClock()
    rt = _backend("default", mode="real-time", seed=9, clock=clock, sleep=clock.sleep)
    try:
        for a in acts[:6]:  # a fast caller: 5 ms of compute per step
            clock.now += 0.005
            np.testing.assert_array_equal(rt.step(a), ref.step(a))
        assert rt.stats["missed_deadlines"] == 0 and rt.stats["stale_ticks"] == 0
        assert rt.stats["sim_time_s"] == pytest.approx(rt.stats["wall_time_s"], abs=dt)

        clock.now += 3.5 * dt  # the planner stalls for 70 ms, then sends acts[6]
        o = rt.step(acts[6])
        for _ in range(3):  # the robot kept moving on acts[5]
            ref.step(acts[5])
        np.testing.assert_array_equal(o, ref.step(acts[6]))
        st = rt.stats
        assert st["missed_deadlines"] == 1 and st["stale_ticks"] == 3 and st["control_steps"] == 10
        assert st["sim_time_s"] == pytest.approx(st["wall_time_s"], abs=dt)
        # The evaluation reward was recorded for every tick, seen or not.
        assert len(rt.probe().rewards) == 10
        # observe() catches up too: 2 ticks later the robot has moved on acts[6].
        clock.now += 2 * dt
        ref.step(acts[6])
        np.testing.assert_array_equal(rt.observe(), ref.step(acts[6]))
    finally:
        rt.close()
        ref.close()


def test_real_time_with_the_wall_clock():
    """A slow caller misses deadlines and the simulation still follows wall time; a fast
    one misses none. ctrl_dt = 50 ms leaves a fast caller a wide margin on a busy machine."""
    cfg = dataclasses.replace(cp_task.CartpoleEnvConfig(), ctrl_dt=0.05)
    b = _backend("none", mode="real-time", env_config=cfg)
    try:
        assert b.spec.control_dt == 0.05 and b.n_substeps == 5
        b.reset()
        for _ in range(8):  # fast caller
            b.step([0.1])
        st = b.stats
        assert st["missed_deadlines"] == 0 and st["control_steps"] >= 8
        assert abs(st["sim_time_s"] - st["wall_time_s"]) < 0.1

        b.reset()
        t0 = time.monotonic()
        for _ in range(4):  # slow caller: 120 ms per decision
            time.sleep(0.12)
            b.step([0.1])
        wall = time.monotonic() - t0
        st = b.stats
        assert st["missed_deadlines"] > 0 and st["stale_ticks"] > 0
        assert st["control_steps"] >= 4 * 2
        assert abs(st["sim_time_s"] - wall) < 0.15
    finally:
        b.close()


# ---- feasibility of the default gap ----------------------------------------------------
def _lqr(model, n_substeps, latency):
    """Discrete LQR about upright for the true (gapped) model, with the in-flight actions of
    the latency FIFO as extra states. Dry friction is left out of the linearisation."""
    import scipy.linalg

    m = copy.deepcopy(model)
    m.dof_frictionloss[:] = 0.0

    def f(s, u):
        d = mujoco.MjData(m)
        d.qpos[:], d.qvel[:], d.ctrl[:] = s[:2], s[2:], u
        for _ in range(n_substeps):
            mujoco.mj_step(m, d)
        return np.r_[d.qpos, d.qvel]

    e, z = 1e-6, np.zeros(4)
    A = np.stack([(f(z + e * np.eye(4)[i], 0) - f(z - e * np.eye(4)[i], 0)) / (2 * e) for i in range(4)], 1)
    B = ((f(z, e) - f(z, -e)) / (2 * e))[:, None]
    n = 4 + latency
    Aa, Ba = np.zeros((n, n)), np.zeros((n, 1))
    Aa[:4, :4] = A
    if latency:
        Aa[:4, 4:5] = B
        for j in range(latency - 1):
            Aa[4 + j, 5 + j] = 1.0
        Ba[-1, 0] = 1.0
    else:
        Ba[:4] = B
    Q, R = np.diag([1, 20, 0.1, 0.5] + [0] * latency), np.array([[5.0]])
    P = scipy.linalg.solve_discrete_are(Aa, Ba, Q, R)
    return np.linalg.solve(R + Ba.T @ P @ Ba, Ba.T @ P @ Aa)[0]


def test_default_gap_is_feasible():
    """The demo's gap leaves the task solvable: an oracle that knows the true gapped model
    (energy pumping, then LQR) swings the pole up and balances it through the interface."""
    b = _backend("default", seed=0)
    try:
        m = b.probe().model
        K = _lqr(m, b.n_substeps, b.latency)
        mp, lc = m.body_mass[2], m.body_ipos[2, 2]
        ip = m.body_inertia[2, 0] + mp * lc**2
        e_swing = 2 * mp * 9.81 * lc
        inflight = [0.0] * b.latency
        o, coses = b.reset(seed=0), []
        for _ in range(400):
            x, c, s, xd, thd = (float(v) for v in o)
            if c > 0.9:
                u = -K @ np.r_[x, np.arctan2(s, c), xd, thd, inflight]
            else:
                energy = 0.5 * ip * thd**2 + mp * 9.81 * lc * (c - 1)
                u = -3.0 * (0.05 * e_swing - energy) / e_swing * thd * c - 0.3 * x - 0.3 * xd
            u = float(np.clip(u, -1, 1))
            inflight = (inflight + [u])[1:] if b.latency else []
            o = b.step([u])
            coses.append(b.probe().true_observation()[1])
            assert not b.done(), b.stop_reason
        assert np.mean(coses[-100:]) > 0.98  # upright for the last 2 s
        assert b.probe().episode_return > 200  # of at most 400
    finally:
        b.close()


# ---- dummy backend ---------------------------------------------------------------------
def test_dummy_robot_is_a_double_integrator():
    with DummyRobot(action_size=2, control_dt=0.1, position_limit=1.0) as r:
        o = r.reset()
        assert r.spec.obs_size == 4 and np.all(o == 0)
        o = r.step([1.0, -5.0])  # second entry clamped to -1
        np.testing.assert_allclose(o, [0.01, -0.01, 0.1, -0.1], rtol=1e-6)
        assert r.stats["clamped_actions"] == 1
        for _ in range(20):
            r.step([1.0, 0.0])
            if r.done():
                break
        assert r.done() and "position" in r.stop_reason
        with pytest.raises(RobotError):
            r.step([np.nan, 0.0])
    assert not r.connected


def test_dummy_backend_has_the_robots_spec():
    d = make_backend("dummy", "cartpole", "obs_noise=0.1")
    s = make_backend("sim-real", "cartpole")
    assert d.spec == s.spec
    with d:
        d.reset()
        assert d.step([0.2]).shape == (5,)
    with pytest.raises(RobotError, match="unknown gap key 'pole_mass'"):
        make_backend("dummy", "cartpole", "pole_mass=2")


def test_public_hooks_expose_the_simulator_read_only():
    b = make_backend("sim-real", "cartpole", gap={"pole_mass": 2.0}, seed=0)
    assert b.mj_model is None and b.mj_data is None  # not connected yet
    with b:
        b.reset(seed=0)
        assert b.mj_model is b.probe().model and b.mj_data.qpos.shape == (2,)
        assert b.mj_model.body_mass[cp_task.POLE_BODY] == pytest.approx(2 * NOMINAL.body_mass[cp_task.POLE_BODY])
        assert type(b.adapter).__module__ == "simdist.robots.cartpole.sim_real" and b.adapter.robot.name == "cartpole"
        with pytest.raises(AttributeError):
            b.mj_model = None
