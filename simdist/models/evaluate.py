"""Held-out evaluation of a world model, shared by distill and finetune.

- `heldout_report`: labelled (sim) windows: latent error per horizon step, reward and value R²,
  behaviour-cloning error, and the hold-still baseline (distill's report and history).
- `latent_report`: unlabelled (real) windows: latent error per horizon step of the model's own
  context and dynamics, and the hold-still baseline (finetune's before / after).

The hold-still baseline predicts that the latent stays where it is, z_{t+k} = z_t; it is one
function, `hold_still_sq`, used by both. R² is `r2`.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.models.train import WorldModelTrainer
from simdist.models.world_model import WorldModel

EVAL_CHUNK = 512  # windows per jitted call of `latent_report`


def hold_still_sq(z0: jax.Array, z_future: jax.Array) -> jax.Array:
    """Squared error of the hold-still baseline: (z_{t+k} - z_t)², shape [batch, k, latent]."""
    return (z_future - z0[:, None]) ** 2


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination over all elements (float64)."""
    return float(1.0 - np.sum((pred - target) ** 2) / max(np.sum((target - target.mean()) ** 2), 1e-12))


def _batches(windows: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    n = len(next(iter(windows.values())))
    for i in range(0, n - size + 1, size):
        yield {k: v[i : i + size] for k, v in windows.items()}


@functools.partial(jax.jit, static_argnums=0)
def _encoded_hold_still(graphdef, state, obs):
    """Per horizon step: the hold-still error on encoded observations, and the targets' variance.
    Module-level so that it compiles once, not at every evaluation."""
    z = nnx.merge(graphdef, state).encode(obs)
    return hold_still_sq(z[:, 0], z[:, 1:]).mean(axis=(0, 2)), z[:, 1:].var(axis=0).mean(axis=-1)


def heldout_report(trainer: WorldModelTrainer, windows: dict[str, np.ndarray], batch_size: int,
                   r2_steps: int) -> dict[str, Any]:
    """Held-out metrics over a fixed set of labelled windows, aggregated over batches exactly."""
    graphdef, state = nnx.split(trainer.model())
    lat, base, tvar, rp, vp, rl, vl, bc = [], [], [], [], [], [], [], []
    for b in _batches(windows, batch_size):
        m = jax.device_get(trainer.evaluate(b))
        hs, tv = jax.device_get(_encoded_hold_still(graphdef, state, jnp.asarray(b["obs"])))
        lat.append(m["latent_h"]), base.append(hs), tvar.append(tv)
        rp.append(m["reward_pred"]), vp.append(m["value_pred"]), bc.append(float(m["bc_mse_raw"]))
        rl.append(b["reward"]), vl.append(b["value"])
    rp, vp, rl, vl = (np.concatenate(x) for x in (rp, vp, rl, vl))
    horizon = rp.shape[1]
    latent_h = np.mean(lat, axis=0)
    return {
        "windows": int(len(rp)),
        "latent_error_per_step": [float(x) for x in latent_h],
        "latent_error_hold_still_per_step": [float(x) for x in np.mean(base, axis=0)],
        "latent_target_variance_per_step": [float(x) for x in np.mean(tvar, axis=0)],
        "latent_error_mean": float(latent_h.mean()),
        "reward_r2_per_step": [r2(rp[:, k], rl[:, k]) for k in range(horizon)],
        "value_r2_per_step": [r2(vp[:, k], vl[:, k]) for k in range(horizon)],
        f"reward_r2_first_{r2_steps}": r2(rp[:, :r2_steps], rl[:, :r2_steps]),
        f"value_r2_first_{r2_steps}": r2(vp[:, :r2_steps], vl[:, :r2_steps]),
        "reward_r2_all": r2(rp, rl),
        "value_r2_all": r2(vp, vl),
        "bc_action_mse": float(np.mean(bc)),
        "bc_action_rmse": float(np.sqrt(np.mean(bc))),
    }


@functools.partial(jax.jit, static_argnums=0)
def _latent_errors(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    ctx = model.context(batch["hist_obs"], batch["hist_act"], batch["obs"][:, 0])
    z_hat = model.dynamics(ctx, batch["act"])  # ẑ_{t+1..t+T}
    z_tgt = model.encode(batch["obs"][:, 1:])  # enc(o_{t+1..t+T}), the loss's target
    return ((z_hat - z_tgt) ** 2).mean(-1), hold_still_sq(ctx["z0"], z_tgt).mean(-1)


def latent_report(model: WorldModel, windows: dict[str, np.ndarray]) -> dict[str, Any]:
    """Held-out latent MSE per horizon step (exact mean over all windows), and the hold-still baseline."""
    graphdef, state = nnx.split(model)
    n = len(windows["obs"])
    size = min(n, EVAL_CHUNK)
    errs, holds = [], []
    for i in range(0, n, size):
        idx = np.arange(i, i + size) % n  # the last chunk wraps around; trimmed below
        err, hold = jax.device_get(_latent_errors(graphdef, state, {k: v[idx] for k, v in windows.items()}))
        keep = min(size, n - i)
        errs.append(np.asarray(err[:keep], np.float64))
        holds.append(np.asarray(hold[:keep], np.float64))
    err = np.concatenate(errs).mean(0)
    hold = np.concatenate(holds).mean(0)
    return {
        "windows": int(n),
        "latent_error_mean": float(err.mean()),
        "latent_error_per_step": [float(x) for x in err],
        "latent_error_hold_still_per_step": [float(x) for x in hold],
    }
