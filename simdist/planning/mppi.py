"""A JIT-compiled MPPI planner over a latent world model, generic over the model.

The planner never sees a world-model class. It receives a :class:`PlanModel`: a bundle of
*pure* functions that take the model parameters first (for an nnx world model, the lead
splits the module into ``graphdef, state`` and the adapter closes over ``graphdef``). The
context is encoded once per control step, outside the planner; only ``dynamics``, ``reward``
and ``value`` run inside the sampling loop (``prior`` and ``z0`` run once per call).

Shapes (``N`` candidate sequences, ``T`` = ``cfg.horizon``, ``A`` actions, ``Z`` latent,
``C`` command; ``C`` may be 0, i.e. ``command`` is an array of shape ``[0]``):

``dynamics(params, ctx, actions[N,T,A]) -> z[N,T,Z]``
    Predicted latents ``z_1 .. z_T`` after applying ``a_0 .. a_{T-1}`` from the current
    latent ``z_0``. ``ctx`` (any pytree: the encoded history / current latent) is shared by
    all ``N`` sequences; the function broadcasts it over the batch itself.
``reward(params, z_prev[N,T,Z], actions[N,T,A], z_next[N,T,Z], command[C]) -> r[N,T]``
    ``r_k = r(z_k, a_k, z_{k+1})``; ``z_prev[:, 0]`` is ``z_0``.
``value(params, z[N,Z], command[C]) -> v[N]``
    Value of a latent. It is applied to the last predicted latent ``z_T``.
``prior(params, ctx, command[C]) -> chunk[Tp,A]``  or ``None``
    The policy prior (BC head): an action chunk ``a_0 .. a_{Tp-1}`` starting at the current
    step. It is truncated to ``T`` steps, or padded by repeating its last action.
``z0(ctx) -> z[Z]``
    The current latent stored inside the encoded context.
``prior_rollout(params, ctx, command[C], T) -> actions[T,A]``  or ``None`` (optional)
    The prior rolled closed-loop through the dynamics; used instead of ``prior`` when
    ``cfg.prior_rollout`` is set.

Return of a candidate (discount ``γ``)::

    R = Σ_{k=0}^{T-1} γ^k r̂_k  +  w γ^T v̂(ẑ_T)      (w = ``value_weight``, 1 by default)

The reference code writes ``γ^{T+1}``; we use ``γ^T`` because the value label stored with the
last step is ``V(s_{t+T})`` (the state reached after ``T`` actions), so ``γ^T`` makes the
return an unbiased T-step bootstrap of the discounted value. With an exact model and exact
value this makes the finite-horizon optimum equal to the infinite-horizon one (tested on LQR).

One call of :func:`plan`:

1. **Start** (warm start, the default): the previous plan's mean is shifted ONE step forward
   (its first action was just executed) and the tail is filled by repeating the last action:
   ``mean' = [m_1, m_2, ..., m_{T-1}, m_{T-1}]``. The std is reset to ``init_std`` (reference
   behaviour). ``warm_start=False`` starts cold from :func:`init_plan_state` (mean = midpoint
   of the bounds, std = ``init_std``). If the previous state is not finite (a NaN plan), the
   planner cold-starts automatically, so one bad step does not poison every later one.
2. **Iterate** ``cfg.iterations`` times (``lax.fori_loop``: the whole plan is one XLA
   program). Candidates of an iteration, ``samples + prior_samples + 1`` in all:

   - the current mean itself (un-noised; common practice, it keeps a good warm start alive);
   - ``samples`` Gaussian sequences ``mean + std * ε`` clipped to ``[action_low, action_high]``
     (ε is white noise, or with ``noise_beta > 0`` coloured along the horizon:
     :func:`colored_noise`, which also colours the prior samples' noise);
   - ``prior_samples`` sequences ``prior chunk + N(0, prior_noise_std²)`` clipped to the
     bounds (only when ``model.prior`` is not ``None`` and ``prior_samples > 0``); the prior
     chunk is computed once per call and mixed into EVERY iteration. With several
     ``prior_command_scales`` the prior is queried once per scaled command and prior sample
     ``i`` is drawn around chunk ``i mod len(scales)``. With ``prior_rollout`` the chunk is
     ``model.prior_rollout``'s closed-loop sequence instead.

   Returns that are not finite are replaced by ``-inf`` (never elites). The top ``elites``
   candidates by return get weights ``w ∝ exp(temperature * (R - R_max))`` ("temperature"
   multiplies the gap, so it is an inverse temperature: large = greedy). The new mean is the
   weighted elite mean, the new std the square root of the weighted elite variance, clipped
   to ``[min_std, max_std]``.
3. **Output**: the first action of the final mean, clipped to the bounds (with
   ``execute="best"``: of the highest-return candidate of all iterations, which then also
   replaces the mean in the new state); the new :class:`PlanState` = final mean and std
   (NOT shifted: shifting happens in the next call's warm start); diagnostics (scalars, from the last iteration unless stated):
   ``best_return``, ``mean_elite_return``, ``mean_std``, ``nonfinite_returns`` (count over all
   iterations) and ``finite`` (bool: the action and the new state are finite). The planner
   never raises inside jit; the deploy loop must check ``finite`` and stop the robot.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MPPIConfig",
    "PRESETS",
    "PlanModel",
    "PlanState",
    "candidate_returns",
    "colored_noise",
    "elite_statistics",
    "fit_chunk",
    "get_preset",
    "init_plan_state",
    "make_planner",
    "measure_latency",
    "plan",
    "shift_plan",
    "warm_start_state",
]


class PlanModel(NamedTuple):
    """Pure model functions, parameters first. See the module docstring for the shapes."""

    dynamics: Callable[..., jax.Array]  # (params, ctx, actions[N,T,A]) -> z[N,T,Z]
    reward: Callable[..., jax.Array]  # (params, z_prev[N,T,Z], actions[N,T,A], z_next[N,T,Z], command) -> r[N,T]
    value: Callable[..., jax.Array]  # (params, z[N,Z], command) -> v[N]
    prior: Callable[..., jax.Array] | None  # (params, ctx, command) -> chunk[Tp,A], or None
    z0: Callable[..., jax.Array]  # (ctx) -> z[Z]
    # (params, ctx, command, steps) -> actions[steps,A]: the prior rolled closed-loop through the
    # dynamics; only needed for MPPIConfig.prior_rollout.
    prior_rollout: Callable[..., jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class MPPIConfig:
    """MPPI hyper-parameters. Frozen and hashable, so it can be closed over by ``jax.jit``."""

    horizon: int = 10
    samples: int = 128  # Gaussian samples per iteration (the mean and prior samples come on top)
    iterations: int = 3
    elites: int = 32
    temperature: float = 0.25  # weights = exp(temperature * (R - R_max)): an inverse temperature
    init_std: float = 2.0
    min_std: float = 0.05
    max_std: float = 2.0
    prior_samples: int = 16  # prior chunk + N(0, prior_noise_std²), added to every iteration
    prior_noise_std: float = 0.05
    discount: float = 0.99
    # Weight of the terminal value in the return (1 = the method's bootstrap). Below 1 the
    # planner leans on the predicted rewards of its horizon; a diagnostic, see docs/quadruped.md.
    value_weight: float = 1.0
    # Temporal colour of the sampling noise (Gaussian and prior samples): power spectrum
    # ∝ 1/f^beta along the horizon, unit variance per step. 0 = white (the reference); iCEM uses
    # 2-3 for locomotion, so each sample is a smooth deviation rather than per-step jitter.
    noise_beta: float = 0.0
    # What the call outputs and warm-starts from: "mean" (the weighted elite mean; the
    # reference) or "best" (the highest-return candidate seen in any iteration, as iCEM
    # executes). With dissimilar elites the mean can be a small action that none of them is.
    execute: str = "mean"
    # The prior chunk is also queried with the command scaled by each of these factors; prior
    # sample i is drawn around chunk i mod len(scales). (1.0,) = the reference's one chunk.
    # Above 1 the frozen prior proposes its own, more forceful gaits for the same command, and
    # the model judges which of them makes the commanded progress on this robot.
    prior_command_scales: tuple[float, ...] = (1.0,)
    # True: the prior's proposal is rolled closed-loop through the model (a_k = the prior's first
    # action at the predicted latent after a_0..a_{k-1}; TD-MPC2's policy trajectories) instead
    # of the open-loop chunk read at z0. Then the proposals themselves follow the dynamics, so a
    # finetuned model changes what is proposed, not only how it is ranked.
    prior_rollout: bool = False

    def __post_init__(self):
        if self.horizon < 1 or self.iterations < 1 or self.samples < 0 or self.prior_samples < 0:
            raise ValueError(f"horizon and iterations must be >= 1, sample counts >= 0: {self}")
        if not 1 <= self.elites <= self.samples + 1:
            # samples + 1 (the mean) are always there, whether or not the model has a prior.
            raise ValueError(f"elites must be in [1, samples + 1], got {self.elites} for {self.samples} samples")
        if not 0.0 < self.min_std <= self.max_std:
            raise ValueError(f"need 0 < min_std <= max_std, got {self.min_std}, {self.max_std}")
        if self.init_std <= 0 or self.temperature < 0 or self.prior_noise_std < 0:
            raise ValueError(f"init_std must be > 0, temperature and prior_noise_std >= 0: {self}")
        if not 0.0 < self.discount <= 1.0:
            raise ValueError(f"discount must be in (0, 1], got {self.discount}")
        if self.value_weight < 0:
            raise ValueError(f"value_weight must be >= 0, got {self.value_weight}")
        if self.noise_beta < 0:
            raise ValueError(f"noise_beta must be >= 0, got {self.noise_beta}")
        if len(self.prior_command_scales) < 1 or not all(np.isfinite(self.prior_command_scales)):
            raise ValueError(f"prior_command_scales must be one or more finite factors, got {self.prior_command_scales}")
        if self.prior_rollout and self.prior_command_scales != (1.0,):
            raise ValueError("prior_rollout takes the one command: leave prior_command_scales at (1.0,)")
        if self.execute not in ("mean", "best"):
            raise ValueError(f"execute must be 'mean' or 'best', got {self.execute!r}")


# The generic planner presets, for robots that bring none of their own (`Robot.mppi_presets`;
# the cartpole's and the quadruped's hold these same budgets, with their measurements). tiny and
# default fit a 50 Hz (20 ms) control period with margin on a 2-core CPU; cost is ~linear in
# (samples + prior_samples + 1) x horizon x iterations. "paper" is the reference budget, for a
# GPU (~0.3 s per plan on that CPU).
PRESETS: dict[str, MPPIConfig] = {
    "tiny": MPPIConfig(horizon=8, samples=64, iterations=2, elites=16, prior_samples=8),
    "default": MPPIConfig(horizon=10, samples=64, iterations=3, elites=16, prior_samples=16),
    "paper": MPPIConfig(horizon=25, samples=450, iterations=8, elites=64, prior_samples=22),
}


def get_preset(name: str, robot=None) -> MPPIConfig:
    """The MPPI preset `name`: the robot's own (`Robot.mppi_presets`, a `Robot` or a robot
    name) when it has any, else the generic `PRESETS`. ValueError (a ConfigError for a
    robot's) naming the presets when there is no such preset."""
    if robot is not None:
        if isinstance(robot, str):
            from simdist.robot import get_robot

            robot = get_robot(robot)
        own = robot.mppi_config(name)
        if own is not None:
            return own
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown MPPI preset {name!r}; choose one of {sorted(PRESETS)}") from None


class PlanState(NamedTuple):
    """The previous plan, for the warm start (unshifted: ``mean[0]`` is the action just output)."""

    mean: jax.Array  # [T, A]
    std: jax.Array  # [T, A]


def init_plan_state(cfg: MPPIConfig, action_size: int, action_low, action_high) -> PlanState:
    """Cold-start state: mean = midpoint of the bounds (zeros for symmetric bounds), std = init_std."""
    lo = jnp.broadcast_to(jnp.asarray(action_low, jnp.float32), (action_size,))
    hi = jnp.broadcast_to(jnp.asarray(action_high, jnp.float32), (action_size,))
    mean = jnp.broadcast_to(0.5 * (lo + hi), (cfg.horizon, action_size))
    return PlanState(mean=mean, std=jnp.full((cfg.horizon, action_size), cfg.init_std, jnp.float32))


def shift_plan(mean: jax.Array) -> jax.Array:
    """Shift a plan one step forward: ``[m_1, ..., m_{T-1}, m_{T-1}]`` (tail repeats the last action)."""
    return jnp.concatenate([mean[1:], mean[-1:]], axis=0)


def warm_start_state(cfg: MPPIConfig, prev: PlanState) -> PlanState:
    """The starting distribution of a warm-started call: shifted mean, std reset to ``init_std``."""
    return PlanState(mean=shift_plan(prev.mean), std=jnp.full_like(prev.std, cfg.init_std))


def fit_chunk(chunk: jax.Array, horizon: int) -> jax.Array:
    """Truncate an action chunk ``[Tp, A]`` to ``horizon`` steps, or pad it by repeating its last action."""
    chunk = jnp.asarray(chunk, jnp.float32)
    if chunk.ndim != 2:
        raise ValueError(f"the policy prior must return an action chunk [Tp, A], got shape {chunk.shape}")
    tp = chunk.shape[0]
    if tp >= horizon:
        return chunk[:horizon]
    return jnp.concatenate([chunk, jnp.repeat(chunk[-1:], horizon - tp, axis=0)], axis=0)


def colored_noise(key: jax.Array, beta: float, shape: tuple[int, ...]) -> jax.Array:
    """Gaussian noise ``[..., T, A]`` with power spectrum ∝ 1/f^beta along ``T``, unit variance.

    ``beta = 0`` is white noise (a plain normal draw). Built in the frequency domain: the
    amplitude of frequency f (floored at 1/T, so the mean component stays finite) is
    f^(-beta/2); after the inverse real FFT every step is rescaled to variance 1 exactly.
    """
    *lead, t, a = shape
    if beta == 0.0 or t < 2:
        return jax.random.normal(key, shape, jnp.float32)
    f = np.fft.rfftfreq(t)
    amp = np.maximum(f, 1.0 / t) ** (-beta / 2.0)
    # Per-step variance of irfft(amp * (x + iy)) with x, y ~ N(0, 1) is Σ weight * amp² / T²:
    # the real-only terms (DC and, for even T, Nyquist) have weight 1; the others enter as
    # 2 Re(X e^{iθ}), variance 4 amp².
    weight = np.full(f.shape, 4.0)
    weight[0] = 1.0
    if t % 2 == 0:
        weight[-1] = 1.0
    scale = np.sqrt(np.sum(weight * amp**2)) / t
    kr, ki = jax.random.split(key)
    re = jax.random.normal(kr, (*lead, a, f.size), jnp.float32)
    im = jax.random.normal(ki, (*lead, a, f.size), jnp.float32)
    im = im.at[..., 0].set(0.0)
    if t % 2 == 0:
        im = im.at[..., -1].set(0.0)
    spec = (re + 1j * im) * jnp.asarray(amp, jnp.float32)
    x = jnp.fft.irfft(spec, n=t, axis=-1) / jnp.float32(scale)
    return jnp.swapaxes(x, -1, -2).astype(jnp.float32)


def elite_statistics(actions, returns, elites: int, temperature: float, min_std: float, max_std: float):
    """Weighted elite statistics.

    ``actions [M,T,A]``, ``returns [M]`` (non-finite entries must already be ``-inf``).
    Returns ``(mean [T,A], std [T,A], elite_returns [elites] sorted descending)``.
    """
    elite_returns, idx = jax.lax.top_k(returns, elites)
    elite_actions = actions[idx]
    w = jnp.exp(temperature * (elite_returns - elite_returns[0]))  # top_k is sorted: [0] is the max
    w = w / jnp.sum(w)
    mean = jnp.einsum("e,eta->ta", w, elite_actions)
    var = jnp.einsum("e,eta->ta", w, jnp.square(elite_actions - mean))
    std = jnp.clip(jnp.sqrt(var), min_std, max_std)
    return mean, std, elite_returns


def candidate_returns(cfg: MPPIConfig, model: PlanModel, params, ctx, command, z0, actions) -> jax.Array:
    """R = Σ_{k<T} γ^k r̂_k + γ^T v̂(ẑ_T) for every candidate sequence ``actions [M,T,A]``:
    the return the planner ranks candidates by (pure and traceable)."""
    m, t, _ = actions.shape
    z = model.dynamics(params, ctx, actions)  # [M,T,Z]: z_1 .. z_T
    z_prev = jnp.concatenate([jnp.broadcast_to(z0, (m, 1, z0.shape[-1])).astype(z.dtype), z[:, :-1]], axis=1)
    r = model.reward(params, z_prev, actions, z, command)  # [M,T]
    v = model.value(params, z[:, -1], command)  # [M]
    disc = cfg.discount ** jnp.arange(t, dtype=jnp.float32)
    return jnp.sum(r * disc, axis=-1) + cfg.value_weight * (cfg.discount**t) * v


_returns = candidate_returns  # the internal name


def _all_finite(*xs) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def plan(
    cfg: MPPIConfig,
    model: PlanModel,
    params: Any,
    ctx: Any,
    command: jax.Array,
    prev: PlanState,
    key: jax.Array,
    action_low,
    action_high,
    *,
    warm_start: bool = True,
) -> tuple[jax.Array, PlanState, dict[str, jax.Array]]:
    """One MPPI plan. Pure and traceable (wrap with :func:`make_planner` to jit).

    See the module docstring for the exact semantics. Returns ``(action [A], new PlanState,
    diagnostics)``; the new state is the final (unshifted) mean and std.
    """
    lo = jnp.asarray(action_low, jnp.float32)
    hi = jnp.asarray(action_high, jnp.float32)
    t, a = cfg.horizon, lo.shape[-1]
    if tuple(prev.mean.shape) != (t, a) or tuple(prev.std.shape) != (t, a):
        raise ValueError(f"PlanState must be [{t}, {a}] (horizon, action size), got {prev.mean.shape}")
    command = jnp.asarray(command)

    cold = init_plan_state(cfg, a, lo, hi)
    if warm_start:
        warm = warm_start_state(cfg, prev)
        ok = _all_finite(prev.mean, prev.std)  # a NaN plan falls back to a cold start
        start_mean = jnp.clip(jnp.where(ok, warm.mean, cold.mean), lo, hi)
    else:
        start_mean = cold.mean
    start_std = cold.std  # both starts reset the std to init_std

    z0 = model.z0(ctx)
    use_prior = model.prior is not None and cfg.prior_samples > 0
    scales = cfg.prior_command_scales
    if use_prior and cfg.prior_rollout:
        if model.prior_rollout is None:
            raise ValueError("prior_rollout=True needs a model with a prior_rollout function")
        prior_chunk = fit_chunk(model.prior_rollout(params, ctx, command, t), t)  # [T, A]
    elif use_prior and scales == (1.0,):
        prior_chunk = fit_chunk(model.prior(params, ctx, command), t)  # [T, A], broadcast over samples
    elif use_prior:
        chunks = jnp.stack([fit_chunk(model.prior(params, ctx, command * jnp.float32(c)), t) for c in scales])
        prior_chunk = chunks[jnp.arange(cfg.prior_samples) % len(scales)]  # [P, T, A]
    track_best = cfg.execute == "best"  # static: the default loop carries no best candidate

    def body(i, carry):
        mean, std, _, _, bad, top_ret, top_plan = carry
        k_gauss, k_prior = jax.random.split(jax.random.fold_in(key, i))
        gauss = mean + std * colored_noise(k_gauss, cfg.noise_beta, (cfg.samples, t, a))
        cands = [mean[None], jnp.clip(gauss, lo, hi)]
        if use_prior:
            noise = cfg.prior_noise_std * colored_noise(k_prior, cfg.noise_beta, (cfg.prior_samples, t, a))
            cands.append(jnp.clip(prior_chunk + noise, lo, hi))
        actions = jnp.concatenate(cands, axis=0)
        ret = _returns(cfg, model, params, ctx, command, z0, actions).astype(jnp.float32)
        finite = jnp.isfinite(ret)
        ret = jnp.where(finite, ret, -jnp.inf)
        new_mean, new_std, elite_ret = elite_statistics(
            actions, ret, cfg.elites, cfg.temperature, cfg.min_std, cfg.max_std
        )
        bad = bad + jnp.sum(~finite).astype(jnp.int32)
        if track_best:
            i_best = jnp.argmax(ret)
            better = ret[i_best] > top_ret
            top_plan = jnp.where(better, actions[i_best], top_plan)
            top_ret = jnp.where(better, ret[i_best], top_ret)
        return new_mean, new_std, elite_ret[0], jnp.mean(elite_ret), bad, top_ret, top_plan

    init = (start_mean, start_std, jnp.float32(-jnp.inf), jnp.float32(-jnp.inf), jnp.int32(0),
            jnp.float32(-jnp.inf), start_mean)
    mean, std, best, elite_mean, bad, _, top_plan = jax.lax.fori_loop(0, cfg.iterations, body, init)
    if track_best:
        mean = top_plan  # output and warm-start from the best candidate (start_mean if none was finite)

    action = jnp.clip(mean[0], lo, hi)
    diag = {
        "best_return": best,
        "mean_elite_return": elite_mean,
        "mean_std": jnp.mean(std),
        "nonfinite_returns": bad,
        "finite": _all_finite(action, mean, std),
    }
    return action, PlanState(mean=mean, std=std), diag


def make_planner(
    cfg: MPPIConfig, model: PlanModel, action_low, action_high, *, warm_start: bool = True
) -> Callable[..., tuple[jax.Array, PlanState, dict[str, jax.Array]]]:
    """A jitted ``(params, ctx, command, prev, key) -> (action, new_state, diag)``.

    ``cfg``, ``model`` and the bounds are baked into the compiled program.
    """
    lo = np.asarray(action_low, np.float32)
    hi = np.asarray(action_high, np.float32)
    if lo.shape != hi.shape or lo.ndim != 1 or np.any(lo > hi):
        raise ValueError(f"action bounds must be two [A] arrays with low <= high, got {lo} and {hi}")

    def planner(params, ctx, command, prev, key):
        return plan(cfg, model, params, ctx, command, prev, key, lo, hi, warm_start=warm_start)

    return jax.jit(planner)


def measure_latency(planner_fn: Callable, args: tuple, n: int = 200) -> dict[str, float]:
    """Wall-clock latency of ``planner_fn(*args)`` in milliseconds, after one warm-up call.

    Every call is followed by ``jax.block_until_ready``. Returns ``p50_ms``, ``p99_ms``,
    ``mean_ms``, ``max_ms`` and ``compile_ms`` (the warm-up call).
    """
    t0 = time.perf_counter()
    jax.block_until_ready(planner_fn(*args))
    compile_ms = 1e3 * (time.perf_counter() - t0)
    times = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(planner_fn(*args))
        times[i] = time.perf_counter() - t0
    times *= 1e3
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(times.mean()),
        "max_ms": float(times.max()),
        "compile_ms": compile_ms,
    }
