"""MPPI planner on a toy latent model whose optimum is known (discounted LQR with a drift).

The toy latent is ``z = [x (3), 1]``: linear dynamics ``z' = A z + B a`` whose constant component
adds a drift that must be held against with a non-zero action (so a cold start at zero is
genuinely wrong), reward ``-(x'ᵀQx' + aᵀRa)`` and value ``-zᵀPz`` from the discounted Riccati
solution. The T-step return with a ``γ^T`` bootstrap then has the LQR optimum:
first action ``-K z0`` and optimal return ``-z0ᵀ P z0`` for any horizon.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simdist.planning import (
    PRESETS,
    MPPIConfig,
    PlanModel,
    PlanState,
    colored_noise,
    elite_statistics,
    fit_chunk,
    init_plan_state,
    make_planner,
    measure_latency,
    shift_plan,
    warm_start_state,
)
from tests.synthetic_model import synthetic_mlp_model

GAMMA = 0.9
_A3 = np.array([[1.0, 0.2, 0.0], [0.0, 0.9, 0.2], [0.1, 0.0, 0.95]])
_B3 = np.array([[0.5, 0.0], [0.0, 0.5], [0.25, 0.25]])
A_MAT = np.zeros((4, 4))
A_MAT[:3, :3], A_MAT[:3, 3], A_MAT[3, 3] = _A3, -_B3 @ np.array([2.5, -2.0]), 1.0  # drift column
B_MAT = np.zeros((4, 2))
B_MAT[:3] = _B3
Q_MAT = np.diag([1.0, 1.0, 1.0, 0.0])
R_MAT = 0.1 * np.eye(2)
LO, HI = np.full(2, -10.0, np.float32), np.full(2, 10.0, np.float32)
NO_COMMAND = jnp.zeros((0,), jnp.float32)


def discounted_lqr(a, b, q, r, gamma, iters=3000):
    """P, K of V(z) = max Σ γ^k -(z_{k+1}ᵀQz_{k+1} + a_kᵀRa_k) = -zᵀPz, a* = -Kz."""
    p = np.zeros_like(q)
    for _ in range(iters):
        m = q + gamma * p
        k = np.linalg.solve(r + b.T @ m @ b, b.T @ m @ a)
        p = a.T @ m @ a - a.T @ m @ b @ k
    return p, k


P_MAT, K_MAT = discounted_lqr(A_MAT, B_MAT, Q_MAT, R_MAT, GAMMA)
PARAMS = {k: jnp.asarray(v, jnp.float32) for k, v in dict(A=A_MAT, B=B_MAT, Q=Q_MAT, R=R_MAT, P=P_MAT, K=K_MAT).items()}


def _dynamics(p, ctx, actions):
    z = jnp.broadcast_to(ctx["z"], (actions.shape[0], ctx["z"].shape[-1]))

    def step(z, a):
        zn = z @ p["A"].T + a @ p["B"].T
        return zn, zn

    _, zs = jax.lax.scan(step, z, jnp.swapaxes(actions, 0, 1))
    return jnp.swapaxes(zs, 0, 1)


def _reward(p, z_prev, actions, z_next, command):
    del z_prev, command
    return -(jnp.einsum("ntz,zy,nty->nt", z_next, p["Q"], z_next) + jnp.einsum("nta,ab,ntb->nt", actions, p["R"], actions))


def _value(p, z, command):
    return -jnp.einsum("nz,zy,ny->n", z, p["P"], z)


def _lqr_prior(p, ctx, command):
    """The LQR closed-loop action chunk (12 steps: longer than the horizons used, so truncated)."""

    def step(z, _):
        a = -p["K"] @ z
        return p["A"] @ z + p["B"] @ a, a

    return jax.lax.scan(step, ctx["z"], None, length=12)[1]


TOY = PlanModel(dynamics=_dynamics, reward=_reward, value=_value, prior=None, z0=lambda ctx: ctx["z"])
TOY_PRIOR = TOY._replace(prior=_lqr_prior)


def aug(x) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64), [1.0]]).astype(np.float32)


def a_star(z) -> np.ndarray:
    return -K_MAT @ np.asarray(z, np.float64)


def v_star(z) -> float:
    z = np.asarray(z, np.float64)
    return float(-z @ P_MAT @ z)


def np_return(actions, z0, gamma=GAMMA, value_weight=1.0) -> float:
    """Σ_k γ^k r_k + w γ^T V(z_T) in float64, the formula the planner must implement."""
    z, total = np.asarray(z0, np.float64), 0.0
    for k, a in enumerate(np.asarray(actions, np.float64)):
        zn = A_MAT @ z + B_MAT @ a
        total += gamma**k * -(zn @ Q_MAT @ zn + a @ R_MAT @ a)
        z = zn
    return total + value_weight * gamma ** len(actions) * v_star(z)


Z0S = [aug(x) for x in np.random.default_rng(0).normal(size=(3, 3))]

# Enough samples and iterations, and a softer weighting than the reference 0.25 (the toy's
# returns are O(10)), so that no key collapses the std before the mean has converged.
CONVERGE = MPPIConfig(
    horizon=4, samples=384, iterations=12, elites=48, temperature=0.1, min_std=0.01, prior_samples=0, discount=GAMMA
)
ONE_ITER = MPPIConfig(horizon=4, samples=128, iterations=1, elites=32, prior_samples=16, discount=GAMMA)


@functools.cache
def planner(cfg: MPPIConfig, model: PlanModel = TOY, warm: bool = True, lo=tuple(LO), hi=tuple(HI)):
    return make_planner(cfg, model, np.array(lo), np.array(hi), warm_start=warm)


def cold(cfg: MPPIConfig) -> PlanState:
    return init_plan_state(cfg, 2, LO, HI)


def ctx_of(z):
    return {"z": jnp.asarray(z, jnp.float32)}


# ----------------------------------------------------------------------------------------------


def test_lqr_toy_is_what_the_tests_assume():
    # The optimum needs a clearly non-zero action (drift), and the LQR sequence attains -z0ᵀPz0.
    assert np.linalg.norm(a_star(aug([0, 0, 0]))) > 2.0
    z0 = Z0S[0]
    z, seq = z0.astype(np.float64), []
    for _ in range(4):
        seq.append(-K_MAT @ z)
        z = A_MAT @ z + B_MAT @ seq[-1]
    assert np_return(seq, z0) == pytest.approx(v_star(z0), rel=1e-9)


def test_planner_converges_to_the_lqr_optimum():
    plan_fn = planner(CONVERGE)
    for i, z0 in enumerate(Z0S):
        action, state, diag = plan_fn(PARAMS, ctx_of(z0), NO_COMMAND, cold(CONVERGE), jax.random.key(i))
        target = a_star(z0)
        assert np.linalg.norm(np.asarray(action) - target) < 0.1 * np.linalg.norm(target) + 0.02
        best, vs = float(diag["best_return"]), v_star(z0)
        # Close to the optimum, and never above it: a γ^{T+1} bootstrap would overshoot V*.
        assert best >= vs - 0.01 * abs(vs) - 0.01
        assert best <= vs + 1e-4 * (1 + abs(vs))
        assert bool(diag["finite"]) and state.mean.shape == (4, 2)
        # The planner's return of its own final mean agrees with the float64 formula.
        assert float(diag["mean_elite_return"]) <= best
        assert np_return(state.mean, z0) <= vs + 1e-6


def test_best_return_is_the_documented_discounted_return():
    # elites=1 and a huge temperature: the new mean IS the best candidate, whose return is best_return.
    cfg = MPPIConfig(horizon=4, samples=64, iterations=1, elites=1, temperature=1e6, prior_samples=0, discount=GAMMA)
    z0 = Z0S[1]
    _, state, diag = planner(cfg)(PARAMS, ctx_of(z0), NO_COMMAND, cold(cfg), jax.random.key(3))
    assert float(diag["best_return"]) == pytest.approx(np_return(state.mean, z0), rel=1e-4)
    np.testing.assert_allclose(np.asarray(state.std), cfg.min_std)  # one elite: zero variance, clipped


@pytest.mark.parametrize("w", [0.0, 0.3])
def test_value_weight_scales_only_the_terminal_value(w):
    cfg = MPPIConfig(horizon=4, samples=64, iterations=1, elites=1, temperature=1e6, prior_samples=0,
                     discount=GAMMA, value_weight=w)
    z0 = Z0S[1]
    _, state, diag = planner(cfg)(PARAMS, ctx_of(z0), NO_COMMAND, cold(cfg), jax.random.key(3))
    best = float(diag["best_return"])
    assert best == pytest.approx(np_return(state.mean, z0, value_weight=w), rel=1e-4)
    assert best != pytest.approx(np_return(state.mean, z0), rel=1e-2)  # the value term really changed
    with pytest.raises(ValueError, match="value_weight"):
        MPPIConfig(value_weight=-1.0)


def test_warm_start_beats_cold_start_in_closed_loop():
    # A warm-started call from the cold state IS a cold start (shifting the constant midpoint
    # mean is the identity, the std is reset), so one compiled planner serves both.
    cfg, fn = ONE_ITER, planner(ONE_ITER, TOY)
    z, state = aug([1.0, -1.0, 0.5]), cold(cfg)
    err_warm, err_cold, gap_warm, gap_cold = [], [], [], []
    for k in range(12):
        key = jax.random.key(100 + k)
        aw, state, dw = fn(PARAMS, ctx_of(z), NO_COMMAND, state, key)
        ac, _, dc = fn(PARAMS, ctx_of(z), NO_COMMAND, cold(cfg), key)
        if k >= 2:
            err_warm.append(np.linalg.norm(np.asarray(aw) - a_star(z)))
            err_cold.append(np.linalg.norm(np.asarray(ac) - a_star(z)))
            gap_warm.append(v_star(z) - float(dw["best_return"]))
            gap_cold.append(v_star(z) - float(dc["best_return"]))
        z = (A_MAT @ z + B_MAT @ np.asarray(aw, np.float64)).astype(np.float32)
    assert np.mean(err_warm) < 0.6 * np.mean(err_cold), (err_warm, err_cold)
    assert np.mean(gap_warm) < 0.5 * np.mean(gap_cold), (gap_warm, gap_cold)


def test_warm_start_shifts_the_previous_mean_by_one_step():
    cfg = MPPIConfig(horizon=5, samples=8, iterations=1, elites=1, init_std=1.0, prior_samples=0, discount=GAMMA)
    mean = jnp.asarray(np.random.default_rng(1).uniform(-3, 3, size=(5, 2)), jnp.float32)
    prev = PlanState(mean=mean, std=jnp.full((5, 2), 0.3))
    shifted = warm_start_state(cfg, prev)
    np.testing.assert_array_equal(shifted.mean, np.concatenate([mean[1:], mean[-1:]]))
    np.testing.assert_array_equal(shifted.std, np.full((5, 2), cfg.init_std))
    np.testing.assert_array_equal(shift_plan(mean)[:-1], mean[1:])
    # Inside plan: with a (near) zero sampling spread, the new plan is the shifted previous mean
    # and the action output is the previous plan's SECOND action.
    frozen = dataclasses.replace(cfg, init_std=1e-6, min_std=1e-6, max_std=1e-6)
    action, state, _ = planner(frozen)(PARAMS, ctx_of(Z0S[0]), NO_COMMAND, prev, jax.random.key(0))
    np.testing.assert_allclose(state.mean, shifted.mean, atol=1e-5)
    np.testing.assert_allclose(action, mean[1], atol=1e-5)
    # Cold start ignores the previous plan: starts from the midpoint of the bounds.
    action, state, _ = planner(frozen, warm=False)(PARAMS, ctx_of(Z0S[0]), NO_COMMAND, prev, jax.random.key(0))
    np.testing.assert_allclose(state.mean, 0.0, atol=1e-5)
    # A non-finite previous plan falls back to a cold start instead of propagating NaN.
    nan_prev = PlanState(mean=mean.at[2, 1].set(jnp.nan), std=prev.std)
    action, state, diag = planner(frozen)(PARAMS, ctx_of(Z0S[0]), NO_COMMAND, nan_prev, jax.random.key(0))
    assert bool(diag["finite"])
    np.testing.assert_allclose(state.mean, 0.0, atol=1e-5)


def test_policy_prior_samples_help():
    with_prior, without = planner(ONE_ITER, TOY_PRIOR), planner(ONE_ITER, TOY)  # both from a cold state
    err_with, err_without = [], []
    for i, z0 in enumerate(Z0S):
        args = (PARAMS, ctx_of(z0), NO_COMMAND, cold(ONE_ITER), jax.random.key(10 + i))
        err_with.append(np.linalg.norm(np.asarray(with_prior(*args)[0]) - a_star(z0)))
        err_without.append(np.linalg.norm(np.asarray(without(*args)[0]) - a_star(z0)))
    assert np.mean(err_with) < 0.25 * np.mean(err_without), (err_with, err_without)
    assert max(err_with) < 0.15


def test_fit_chunk_truncates_or_repeats_the_last_action():
    chunk = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(fit_chunk(chunk, 2), chunk[:2])
    np.testing.assert_array_equal(fit_chunk(chunk, 5), np.array([[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]))


def test_bounds_are_respected_by_every_candidate():
    lo, hi = (-0.1, -0.3), (0.2, 0.05)  # asymmetric, and far tighter than the optimum (|a*| > 2)
    cfg = ONE_ITER
    state = init_plan_state(cfg, 2, np.array(lo), np.array(hi))
    np.testing.assert_allclose(state.mean, np.broadcast_to([0.05, -0.125], (4, 2)))  # the midpoint
    fn = planner(cfg, TOY_PRIOR, lo=lo, hi=hi)
    action, state, diag = fn(PARAMS, ctx_of(Z0S[2]), NO_COMMAND, state, jax.random.key(0))
    # The mean is a convex combination of candidates, so it only stays inside if they all were clipped.
    for x in (np.asarray(action)[None], np.asarray(state.mean)):
        assert np.all(x >= np.array(lo) - 1e-6) and np.all(x <= np.array(hi) + 1e-6)
    assert bool(diag["finite"])


def test_elite_statistics_are_a_weighted_mean():
    rng = np.random.default_rng(0)
    actions = jnp.asarray(rng.normal(size=(50, 3, 2)), jnp.float32)
    returns = jnp.asarray(rng.normal(size=50), jnp.float32)
    best = int(np.argmax(returns))
    mean, std, elite_ret = elite_statistics(actions, returns, 10, 1e4, 0.05, 2.0)  # greedy
    np.testing.assert_allclose(mean, actions[best], atol=1e-6)
    np.testing.assert_allclose(std, 0.05)
    assert float(elite_ret[0]) == float(returns[best])
    temp = 0.7
    mean, std, elite_ret = elite_statistics(actions, returns, 10, temp, 1e-6, 10.0)
    idx = np.argsort(-np.asarray(returns))[:10]
    w = np.exp(temp * (np.asarray(returns)[idx] - np.asarray(returns)[best]))
    w /= w.sum()
    ref_mean = np.einsum("e,eta->ta", w, np.asarray(actions)[idx])
    ref_std = np.sqrt(np.einsum("e,eta->ta", w, (np.asarray(actions)[idx] - ref_mean) ** 2))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(elite_ret, np.asarray(returns)[idx])
    mean, _, _ = elite_statistics(actions, returns, 10, 0.0, 0.05, 2.0)  # temperature 0: uniform
    np.testing.assert_allclose(mean, np.asarray(actions)[idx].mean(0), atol=1e-6)


def _nan_dynamics(p, ctx, actions):
    """NaN latents for every sequence whose first action component exceeds ``p["nan_above"]``."""
    return jnp.where(actions[:, :1, :1] > p["nan_above"], jnp.nan, 1.0) * _dynamics(p, ctx, actions)


def test_non_finite_model_output_sets_the_flag_without_raising():
    cfg = ONE_ITER
    fn = planner(cfg, TOY._replace(dynamics=_nan_dynamics))
    all_nan = {**PARAMS, "nan_above": jnp.float32(-jnp.inf)}
    action, state, diag = fn(all_nan, ctx_of(Z0S[0]), NO_COMMAND, cold(cfg), jax.random.key(0))
    assert not bool(diag["finite"]) and not np.all(np.isfinite(action))
    assert int(diag["nonfinite_returns"]) == cfg.samples + 1
    # Some NaN candidates are just discarded: the plan stays finite and the count says how many.
    some_nan = {**PARAMS, "nan_above": jnp.float32(0.5)}
    action, state, diag = fn(some_nan, ctx_of(Z0S[0]), NO_COMMAND, cold(cfg), jax.random.key(0))
    assert bool(diag["finite"]) and np.all(np.isfinite(action))
    assert 0 < int(diag["nonfinite_returns"]) < cfg.samples + 1


def test_determinism_given_the_key():
    fn = planner(ONE_ITER, TOY_PRIOR)
    args = (PARAMS, ctx_of(Z0S[0]), NO_COMMAND, cold(ONE_ITER))
    a1, s1, d1 = fn(*args, jax.random.key(7))
    a2, s2, d2 = fn(*args, jax.random.key(7))
    a3, _, _ = fn(*args, jax.random.key(8))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(s1.mean, s2.mean)
    np.testing.assert_array_equal(s1.std, s2.std)
    assert float(d1["best_return"]) == float(d2["best_return"])
    assert not np.array_equal(a1, a3)


def test_mlp_model_with_empty_command_and_latency_helper():
    model, params, ctx = synthetic_mlp_model(
        0, latent=16, hidden=32, head_hidden=16, action_size=3, command_size=0, prior_horizon=25
    )
    cfg = PRESETS["tiny"]
    lo, hi = -np.ones(3, np.float32), np.ones(3, np.float32)
    fn = make_planner(cfg, model, lo, hi)
    state = init_plan_state(cfg, 3, lo, hi)
    action, new_state, diag = fn(params, ctx, NO_COMMAND, state, jax.random.key(0))
    assert action.shape == (3,) and new_state.mean.shape == (cfg.horizon, 3) and bool(diag["finite"])
    assert set(diag) >= {"best_return", "mean_elite_return", "mean_std", "finite", "nonfinite_returns"}
    lat = measure_latency(fn, (params, ctx, NO_COMMAND, new_state, jax.random.key(1)), n=5)
    assert 0 < lat["p50_ms"] <= lat["p99_ms"] and lat["mean_ms"] > 0


def test_config_validation_and_presets():
    with pytest.raises(ValueError):
        MPPIConfig(samples=8, elites=32)
    with pytest.raises(ValueError):
        MPPIConfig(min_std=0.5, max_std=0.1)
    paper = PRESETS["paper"]
    assert (paper.horizon, paper.samples, paper.iterations, paper.elites, paper.prior_samples) == (25, 450, 8, 64, 22)
    assert (paper.temperature, paper.init_std, paper.min_std, paper.prior_noise_std, paper.discount) == (
        0.25, 2.0, 0.05, 0.05, 0.99,
    )
    with pytest.raises(ValueError):
        planner(ONE_ITER)(PARAMS, ctx_of(Z0S[0]), NO_COMMAND, init_plan_state(CONVERGE, 3, -1.0, 1.0), jax.random.key(0))


def test_colored_noise_is_white_at_beta_zero_and_smooth_above():
    key = jax.random.key(7)
    np.testing.assert_array_equal(colored_noise(key, 0.0, (4, 10, 3)), jax.random.normal(key, (4, 10, 3)))
    lag1 = {}
    for beta in (0.0, 1.0, 2.5):
        x = np.asarray(colored_noise(key, beta, (20000, 10, 2)))
        assert x.shape == (20000, 10, 2) and x.dtype == np.float32
        np.testing.assert_allclose(x.std(axis=(0, 2)), 1.0, atol=0.03)  # unit variance at every step
        np.testing.assert_allclose(x.mean(), 0.0, atol=0.02)
        lag1[beta] = np.mean([np.corrcoef(x[:, k, 0], x[:, k + 1, 0])[0, 1] for k in range(9)])
    assert abs(lag1[0.0]) < 0.03 < lag1[1.0] < lag1[2.5], lag1


def test_planner_with_colored_noise_still_solves_the_toy():
    cfg = dataclasses.replace(CONVERGE, noise_beta=2.0)
    z0 = Z0S[0]
    action, state, diag = planner(cfg)(PARAMS, ctx_of(z0), NO_COMMAND, cold(cfg), jax.random.key(5))
    assert bool(diag["finite"])
    np.testing.assert_allclose(action, a_star(z0), atol=0.1)
    with pytest.raises(ValueError, match="noise_beta"):
        MPPIConfig(noise_beta=-1.0)


def test_execute_best_outputs_the_best_candidate_not_the_elite_mean():
    kw = dict(horizon=4, samples=64, iterations=1, elites=16, temperature=0.1, prior_samples=0, discount=GAMMA)
    z0, key = Z0S[2], jax.random.key(11)
    a_best, s_best, d_best = planner(MPPIConfig(execute="best", **kw))(PARAMS, ctx_of(z0), NO_COMMAND, cold(MPPIConfig(**kw)), key)
    a_mean, s_mean, d_mean = planner(MPPIConfig(**kw))(PARAMS, ctx_of(z0), NO_COMMAND, cold(MPPIConfig(**kw)), key)
    # Same candidates (same key): the best one's return is best_return, and it is what is output.
    assert float(d_best["best_return"]) == pytest.approx(float(d_mean["best_return"]), rel=1e-6)
    assert np_return(s_best.mean, z0) == pytest.approx(float(d_best["best_return"]), rel=1e-4)
    np.testing.assert_allclose(a_best, np.clip(s_best.mean[0], LO, HI))
    assert np.linalg.norm(np.asarray(a_best) - np.asarray(a_mean)) > 1e-3  # the elite mean is another action
    with pytest.raises(ValueError, match="execute"):
        MPPIConfig(execute="median")


def test_prior_rollout_proposes_the_models_closed_loop_chunk():
    # The open-loop prior proposes nothing (zeros); the closed-loop rollout proposes the LQR
    # chunk. With noise-free prior samples and no Gaussian samples, the greedy planner outputs
    # the LQR action only when it asks for the rollout.
    def zero_prior(p, ctx, command):
        return jnp.zeros((12, 2), jnp.float32)

    def rollout(p, ctx, command, steps):
        return _lqr_prior(p, ctx, command)[:steps]

    model, cmd = TOY._replace(prior=zero_prior, prior_rollout=rollout), jnp.ones((1,), jnp.float32)
    kw = dict(horizon=4, samples=0, iterations=1, elites=1, temperature=1e6, prior_samples=4,
              prior_noise_std=0.0, discount=GAMMA)
    for flag, want in [(False, lambda z0: np.zeros(2)), (True, a_star)]:
        cfg = MPPIConfig(prior_rollout=flag, **kw)
        for i, z0 in enumerate(Z0S):
            action, _, _ = planner(cfg, model)(PARAMS, ctx_of(z0), cmd, cold(cfg), jax.random.key(i))
            np.testing.assert_allclose(action, want(z0), rtol=1e-4, atol=1e-4)
    cfg = MPPIConfig(prior_rollout=True, **kw)
    with pytest.raises(ValueError, match="prior_rollout"):
        planner(cfg, TOY_PRIOR)(PARAMS, ctx_of(Z0S[0]), cmd, cold(cfg), jax.random.key(0))
    with pytest.raises(ValueError, match="prior_rollout"):
        MPPIConfig(prior_rollout=True, prior_command_scales=(1.0, 2.0))


def test_prior_command_scales_query_the_prior_with_scaled_commands():
    # A prior that under-acts by half at its command: only the chunk queried with the command
    # doubled is the LQR optimum. With no Gaussian samples and noise-free prior samples, the
    # greedy planner outputs exactly the best chunk it was offered.
    def half_prior(p, ctx, command):
        return 0.5 * command[0] * _lqr_prior(p, ctx, command)

    model, command = TOY._replace(prior=half_prior), jnp.ones((1,), jnp.float32)
    kw = dict(horizon=4, samples=0, iterations=1, elites=1, temperature=1e6, prior_samples=4,
              prior_noise_std=0.0, discount=GAMMA)
    for scales, factor in [((1.0,), 0.5), ((1.0, 2.0), 1.0), ((0.5, 2.0, 1.0), 1.0)]:
        cfg = MPPIConfig(prior_command_scales=scales, **kw)
        for i, z0 in enumerate(Z0S):
            action, _, _ = planner(cfg, model)(PARAMS, ctx_of(z0), command, cold(cfg), jax.random.key(i))
            np.testing.assert_allclose(action, factor * a_star(z0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prior_command_scales"):
        MPPIConfig(prior_command_scales=())


def test_candidate_returns_is_the_discounted_sum_plus_bootstrap():
    from simdist.planning import mppi

    # z_{k+1} = z_k + a_k (1-D), reward r_k = a_k, value v(z) = z.
    model = PlanModel(
        dynamics=lambda p, ctx, a: ctx + jnp.cumsum(a, axis=1),
        reward=lambda p, zp, a, zn, c: a[..., 0],
        value=lambda p, z, c: z[..., 0],
        prior=None,
        z0=lambda ctx: ctx,
    )
    cfg = MPPIConfig(horizon=3, samples=4, elites=2, discount=0.5, value_weight=2.0)
    actions = jnp.asarray([[[1.0], [2.0], [3.0]], [[0.0], [0.0], [-1.0]]])
    got = mppi.candidate_returns(cfg, model, None, jnp.zeros(1), jnp.zeros(0), jnp.zeros(1), actions)
    want = [1 + 0.5 * 2 + 0.25 * 3 + 2.0 * 0.125 * 6, 0.25 * -1 + 2.0 * 0.125 * -1]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    assert mppi._returns is mppi.candidate_returns  # the planner ranks with the same function
