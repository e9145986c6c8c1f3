"""The MJX env API on the cartpole: determinism, shapes, randomisation, auto-reset."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from simdist.envs import MjxEnv

from tests.conftest import array_fields as _array_fields


def _np(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(_np(x), _np(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_cartpole_indices_match_mjcf_names(cartpole_env):
    from simdist.robots.cartpole import task as t

    m = cartpole_env.mj_model
    assert m.body("cart").id == t.CART_BODY and m.body("pole").id == t.POLE_BODY
    assert m.joint("slider").dofadr[0] == t.SLIDER_DOF and m.joint("hinge").dofadr[0] == t.HINGE_DOF
    # 50 Hz control over 100 Hz physics.
    assert cartpole_env.n_substeps * m.opt.timestep == pytest.approx(0.02)


def test_env_is_deterministic_given_a_key(cartpole_env):
    env = cartpole_env
    reset = jax.jit(lambda k: env.batch_reset(k, 8))
    step = jax.jit(env.batch_step)

    def rollout(key):
        s = reset(key)
        acts = jax.random.uniform(jax.random.key(7), (30, 8, 1), minval=-1, maxval=1)
        for a in acts:
            s = step(s, a)
        return s

    a, b = rollout(jax.random.key(3)), rollout(jax.random.key(3))
    assert _leaves_equal(a, b)
    c = rollout(jax.random.key(4))
    assert not np.array_equal(np.asarray(a.privileged_obs), np.asarray(c.privileged_obs))


def test_observation_shapes_and_contents(cartpole_env):
    env = cartpole_env
    s = jax.jit(lambda k: env.batch_reset(k, 4))(jax.random.key(0))
    assert env.deployable_obs_size == 5 and env.privileged_obs_size == 10
    assert s.deployable_obs.shape == (4, 5) and s.privileged_obs.shape == (4, 10)
    assert s.deployable_obs.dtype == jnp.float32
    # The privileged observation starts with the deployable one.
    np.testing.assert_array_equal(s.privileged_obs[:, :5], s.deployable_obs)
    # The swing-up starts hanging: cos(theta) near -1.
    assert np.all(np.asarray(s.deployable_obs[:, 1]) < -0.95)


def test_randomisation_changes_exactly_what_it_claims(cartpole_env):
    env = cartpole_env
    task = env.task
    base = _array_fields(env.model)
    claimed = {}
    for p in task.randomized_params():
        claimed.setdefault(p.field, set()).add(p.index)
    changed_somewhere = {(p.field, p.index): False for p in task.randomized_params()}
    for seed in range(5):
        model = task.randomize(env.model, jax.random.key(seed))
        new = _array_fields(model)
        assert new.keys() == base.keys()
        for name, arr in new.items():
            diff = np.argwhere(~np.isclose(arr, base[name], rtol=0, atol=0))
            if name not in claimed:
                assert diff.size == 0, f"randomisation changed unclaimed field {name}"
                continue
            for idx in diff:
                assert any(tuple(idx[: len(c)]) == c for c in claimed[name]), f"{name}{tuple(idx)} not claimed"
            for c in claimed[name]:
                if not np.array_equal(arr[c], base[name][c]):
                    changed_somewhere[(name, c)] = True
        # Multipliers stay within their ranges.
        for p in task.randomized_params():
            if p.low is None:
                continue
            nominal = np.atleast_1d(base[p.field][p.index])
            ratio = np.atleast_1d(np.asarray(getattr(model, p.field))[p.index])[nominal != 0] / nominal[nominal != 0]
            assert np.all(ratio >= p.low - 1e-6) and np.all(ratio <= p.high + 1e-6), p.name
    assert all(changed_somewhere.values()), changed_somewhere


def test_randomised_params_reach_physics_and_privileged_obs(cartpole_env, cartpole_robot):
    env = cartpole_env
    s = jax.jit(lambda k: env.batch_reset(k, 16))(jax.random.key(1))
    masses = np.asarray(s.params["body_mass"])[:, 2]
    assert masses.std() > 0.0  # each env has its own pole mass
    nominal = env.mj_model.body_mass[2]
    np.testing.assert_allclose(np.asarray(s.privileged_obs[:, 5]), masses / nominal - 1.0, rtol=1e-5, atol=1e-6)

    # With randomisation off every env has the nominal model.
    cfg = dataclasses.replace(cartpole_robot.expert_config("tiny").env, randomize=False)
    plain = MjxEnv(cartpole_robot.make_task(cfg))
    s2 = jax.jit(lambda k: plain.batch_reset(k, 4))(jax.random.key(1))
    np.testing.assert_allclose(np.asarray(s2.params["body_mass"])[:, 2], nominal, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(s2.privileged_obs[:, 5:]), 0.0, atol=1e-6)


def test_physics_matches_classic_mujoco(cartpole_robot):
    """With randomisation off, the MJX step follows CPU MuJoCo on the same MJCF."""
    cfg = dataclasses.replace(cartpole_robot.expert_config("tiny").env, randomize=False)
    env = MjxEnv(cartpole_robot.make_task(cfg))
    s = jax.jit(env.reset)(jax.random.key(0))
    m = env.mj_model
    d = mujoco.MjData(m)
    d.qpos[:] = np.asarray(s.data.qpos)
    d.qvel[:] = np.asarray(s.data.qvel)
    step = jax.jit(env.step)
    for i in range(25):
        a = np.array([np.sin(i / 4.0)], np.float32)
        s = step(s, jnp.asarray(a))
        d.ctrl[:] = a
        for _ in range(env.n_substeps):
            mujoco.mj_step(m, d)
    np.testing.assert_allclose(np.asarray(s.data.qpos), d.qpos, atol=2e-3)


def test_auto_reset_at_time_limit(cartpole_env):
    env = cartpole_env
    n = env.config.episode_length
    s = jax.jit(lambda k: env.batch_reset(k, 2))(jax.random.key(2))

    def body(st, _):
        st = env.batch_step(st, jnp.zeros((2, 1)))
        return st, (st.reward, st.truncated, st.completed_return, st.step_count)

    s, (r, trunc, completed, count) = jax.jit(lambda st: jax.lax.scan(body, st, None, length=n + 1))(s)
    trunc, count = np.asarray(trunc), np.asarray(count)
    assert not trunc[: n - 1].any() and trunc[n - 1].all() and not trunc[n].any()
    assert (count[n - 1] == 0).all() and (count[n] == 1).all()  # reset, then one step into the new episode
    np.testing.assert_allclose(np.asarray(completed[n - 1]), np.asarray(r[:n]).sum(0), rtol=1e-5)
    assert np.all((np.asarray(r) >= 0) & (np.asarray(r) <= 1))


def _states_equal(a, b, *, rtol: float = 0.0) -> bool:
    """Leaf for leaf, same structure, dtype and shape; bit-identical bytes when rtol == 0, else
    float leaves within rtol (NaN-safe) and all other leaves bit-identical."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if jax.tree.structure(a) != jax.tree.structure(b) or len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        x, y = _np(x), _np(y)
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if rtol and np.issubdtype(x.dtype, np.floating):
            if not np.allclose(x, y, rtol=rtol, atol=rtol, equal_nan=True):
                return False
        elif x.tobytes() != y.tobytes():
            return False
    return True


def _check_batch_step_matches_vmapped_step(env, state, actions, poison=None, rtol: float = 0.0):
    """Steps with `env.batch_step` and with `jax.vmap(env.step)` from the same state at every
    step (continuing from the latter), checking the two results agree (bit for bit when
    rtol == 0). `poison(t, state)` may edit the state before step t. Returns per-step `done`."""
    lazy = jax.jit(env.batch_step)
    eager = jax.jit(jax.vmap(env.step))
    s = state
    dones = []
    for t, act in enumerate(actions):
        if poison is not None:
            s = poison(t, s)
        a, b = lazy(s, act), eager(s, act)
        assert _states_equal(a, b, rtol=rtol), f"batch_step differs from vmap(step) at step {t}"
        dones.append(np.asarray(b.done))
        s = b
    return np.stack(dones)


def test_batch_step_is_bit_identical_to_vmapped_step_cartpole(cartpole_robot):
    """Lazy batch-level auto-reset gives exactly `vmap(step)` across time limits and failures."""
    cfg = dataclasses.replace(cartpole_robot.expert_config("tiny").env, episode_length=5)
    env = MjxEnv(cartpole_robot.make_task(cfg))
    n, steps = 6, 17
    s = jax.jit(lambda k: env.batch_reset(k, n))(jax.random.key(5))
    # Stagger the episodes so that time limits fall on different steps for different envs.
    s = s.replace(step_count=jnp.arange(n, dtype=jnp.int32) % cfg.episode_length)
    acts = jax.random.uniform(jax.random.key(6), (steps, n, env.action_size), minval=-1, maxval=1)

    def poison(t, st):  # a failure: env 1 blows up (non-finite state) at step 7
        if t != 7:
            return st
        return st.replace(data=st.data.replace(qvel=st.data.qvel.at[1].set(jnp.nan)))

    dones = _check_batch_step_matches_vmapped_step(env, s, acts, poison)
    # Both branches of the lazy reset ran: steps with and without an ended episode.
    assert dones.any(1).any() and not dones.any(1).all()
    assert dones.sum() >= n * 2  # every env crossed at least two episode ends


def test_batch_step_matches_vmapped_step_quadruped():
    """The same on the quadruped (5 substeps, domain randomisation), with one env made to fall.
    A freshly reset env may differ in the last bit of contact fields (XLA fuses the reset
    differently), so floats are compared to 1e-5 here."""
    from simdist.robots.quadruped import task as qt

    env = MjxEnv(qt.QuadrupedTask(qt.QuadrupedEnvConfig(episode_length=4)))
    assert env.config.randomize
    n, steps = 3, 6
    s = jax.jit(lambda k: env.batch_reset(k, n))(jax.random.key(0))
    s = s.replace(data=s.data.replace(qpos=s.data.qpos.at[2, 3:7].set(jnp.array([0.0, 1.0, 0.0, 0.0]))))
    s = s.replace(step_count=jnp.array([0, 1, 0], jnp.int32))
    acts = 0.3 * jax.random.uniform(jax.random.key(1), (steps, n, env.action_size), minval=-1, maxval=1)
    dones = _check_batch_step_matches_vmapped_step(env, s, acts, rtol=1e-5)
    assert dones[0, 2] and not dones[0, :2].any()  # the upside-down env fell at once
    assert dones.any(1).any() and not dones.any(1).all()
