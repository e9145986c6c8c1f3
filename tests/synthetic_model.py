"""A synthetic MLP latent model for planner tests and latency measurements (no trained weights
needed). Test-only: it was in simdist.planning.mppi and moved out of the library."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from simdist.planning.mppi import PlanModel, get_preset, init_plan_state, make_planner, measure_latency


def _mlp_init(rng: np.random.Generator, sizes, last_scale=1.0):
    layers = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        scale = (last_scale if i == len(sizes) - 2 else 1.0) / np.sqrt(m)
        w = (scale * rng.standard_normal((m, n))).astype(np.float32)
        layers.append((jnp.asarray(w), jnp.zeros((n,), jnp.float32)))
    return layers


def _mlp(layers, x):
    for w, b in layers[:-1]:
        x = jax.nn.silu(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def synthetic_mlp_model(
    seed: int = 0,
    *,
    latent: int = 64,
    hidden: int = 256,
    head_hidden: int = 128,
    action_size: int = 12,
    command_size: int = 3,
    prior_horizon: int = 25,
) -> tuple[PlanModel, dict, dict]:
    """A random TD-MPC2-style MLP latent model: ``(PlanModel, params, ctx)``.

    Dynamics ``z' = z + MLP([z, a])`` (2 hidden layers of ``hidden``), unrolled with
    ``lax.scan``; reward ``MLP([z, a, z', command])`` and value ``MLP([z, command])`` with one
    hidden layer of ``head_hidden``; prior ``tanh(MLP([z, command]))`` reshaped to a chunk.
    ``ctx = {"z": z0}``. The weights are random: use it for timing and shape checks only.
    """
    z, a, c = latent, action_size, command_size
    rng = np.random.default_rng(seed)  # numpy init: no XLA compiles for a benchmark fixture
    params = {
        "dyn": _mlp_init(rng, (z + a, hidden, hidden, z), last_scale=0.1),
        "rew": _mlp_init(rng, (2 * z + a + c, head_hidden, 1)),
        "val": _mlp_init(rng, (z + c, head_hidden, 1)),
        "pri": _mlp_init(rng, (z + c, head_hidden, prior_horizon * a), last_scale=0.5),
    }
    ctx = {"z": jnp.asarray(rng.standard_normal(z).astype(np.float32))}

    def dynamics(params, ctx, actions):
        n = actions.shape[0]

        def step(zt, at):
            zn = zt + _mlp(params["dyn"], jnp.concatenate([zt, at], axis=-1))
            return zn, zn

        z_init = jnp.broadcast_to(ctx["z"], (n, ctx["z"].shape[-1]))
        _, zs = jax.lax.scan(step, z_init, jnp.swapaxes(actions, 0, 1))
        return jnp.swapaxes(zs, 0, 1)

    def reward(params, z_prev, actions, z_next, command):
        cmd = jnp.broadcast_to(command, (*actions.shape[:-1], command.shape[-1]))
        return _mlp(params["rew"], jnp.concatenate([z_prev, actions, z_next, cmd], axis=-1))[..., 0]

    def value(params, zs, command):
        cmd = jnp.broadcast_to(command, (*zs.shape[:-1], command.shape[-1]))
        return _mlp(params["val"], jnp.concatenate([zs, cmd], axis=-1))[..., 0]

    def prior(params, ctx, command):
        out = _mlp(params["pri"], jnp.concatenate([ctx["z"], command], axis=-1))
        return jnp.tanh(out).reshape(prior_horizon, a)

    return PlanModel(dynamics, reward, value, prior, lambda ctx: ctx["z"]), params, ctx


def benchmark_presets(
    presets=("tiny", "default", "paper"), n: int = 200, *, hidden: int = 256, action_size: int = 12
) -> dict[str, dict[str, float]]:
    """Planner latency per preset on :func:`synthetic_mlp_model` (latent 64, command 3, bounds ±1).

    Returns ``{preset: measure_latency(...)}``; the "paper" preset is measured with at most 20
    calls (it is slow on a CPU). Run ``python -m tests.synthetic_model`` from the repository root
    to print them.
    """
    model, params, ctx = synthetic_mlp_model(0, hidden=hidden, action_size=action_size)
    lo, hi = -np.ones(action_size, np.float32), np.ones(action_size, np.float32)
    command = jnp.zeros((3,), jnp.float32)
    results = {}
    for name in presets:
        cfg = get_preset(name)
        planner = make_planner(cfg, model, lo, hi)
        state = init_plan_state(cfg, action_size, lo, hi)
        args = (params, ctx, command, state, jax.random.key(1))
        results[name] = measure_latency(planner, args, n=min(n, 20) if name == "paper" else n)
    return results


if __name__ == "__main__":
    for name, lat in benchmark_presets().items():
        print(f"{name:8s} p50 {lat['p50_ms']:.2f} ms  p99 {lat['p99_ms']:.2f} ms  compile {lat['compile_ms']:.0f} ms")
