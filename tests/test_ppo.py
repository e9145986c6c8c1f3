"""PPO learns, and its pieces compute what they should."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from simdist.rl.normalizer import RunningStats
from simdist.rl.ppo import gae


def test_tiny_ppo_beats_random_policy_clearly(tiny_expert):
    result, _ = tiny_expert
    m = result.metrics
    assert m["expert_return_mean"] > 5 * m["random_return_mean"]
    assert m["expert_return_mean"] > m["random_return_mean"] + 20.0


def test_value_function_prefers_upright_pole(tiny_expert):
    from simdist.rl.policy import load_expert

    _, out = tiny_expert
    value = load_expert(out).value_fn()
    upright = jnp.zeros((1, 10)).at[0, 1].set(1.0)  # x=0, cos=1, sin=0, at rest, nominal physics
    hanging = jnp.zeros((1, 10)).at[0, 1].set(-1.0)
    assert float(value(upright)[0]) > float(value(hanging)[0])


def test_gae_matches_a_hand_computed_loop():
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    r, v = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    d = (rng.random((T, N)) < 0.2).astype(np.float32)
    last = rng.normal(size=N)
    adv_expected = np.zeros((T, N))
    running = np.zeros(N)
    for t in reversed(range(T)):
        v_next = last if t == T - 1 else v[t + 1]
        delta = r[t] + gamma * v_next * (1 - d[t]) - v[t]
        running = delta + gamma * lam * (1 - d[t]) * running
        adv_expected[t] = running
    adv, ret = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(d), jnp.asarray(last), gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), adv_expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), adv_expected + v, rtol=1e-5, atol=1e-6)


def test_running_stats_match_numpy():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=(50, 4)) for _ in range(4)]
    s = RunningStats.create(4)
    for b in batches:
        s = s.update(jnp.asarray(b, jnp.float32))
    allx = np.concatenate(batches)
    np.testing.assert_allclose(np.asarray(s.mean), allx.mean(0), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s.var), allx.var(0), rtol=1e-3)
    assert float(s.count) == 200
    z = np.asarray(s.normalize(jnp.asarray(allx, jnp.float32)))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-3)


def test_snapshot_schedule_has_early_middle_and_final():
    from simdist.rl.config import PPOConfig

    its = PPOConfig(num_iterations=100, num_snapshots=5).snapshot_iterations()
    assert its == (0, 25, 50, 75, 100)
