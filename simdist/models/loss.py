"""The Stage 3 loss of the latent world model and its batch metrics (R² of the reward and
value heads). The model itself, and the loss's terms, are described in `world_model`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.errors import ConfigError
from simdist.models.world_model import WorldModel


# ---- loss --------------------------------------------------------------------------------


def world_model_loss(model: WorldModel, batch: dict[str, jax.Array], key: jax.Array, *, train: bool):
    """The Stage 3 loss; pure, traceable. Returns (loss, metrics).

    batch (raw units): hist_obs [B,H,O], hist_act [B,H,A], obs [B,T+1,O] (o_t..o_{t+T}),
    act [B,T,A], optional command [B,T,C] (or [B,C]), and optionally reward [B,T] (r(s_i,a_i)),
    value [B,T] (V(s_{i+1})), expert [B,T] (0/1), and expert_action [B,T,A] (needed when
    cfg.bc_target == "relabelled": then every step is a BC target, with the expert's action).
    Without reward/value/expert (real data) only the latent term is used.

    Latent targets are the ONLINE encoder under stop-gradient: z_tgt[k] = sg(enc(o_{t+k+1})).
    With train=True and obs_noise_std > 0, Gaussian noise (normalised units) is added to the
    observation inputs (history and o_t), never to the targets.
    """
    cfg = model.cfg
    norm = model.norm
    hist_obs_n = norm.normalize("obs", batch["hist_obs"])
    obs_n = norm.normalize("obs", batch["obs"])
    hist_act_n = norm.normalize("action", batch["hist_act"])
    act_n = norm.normalize("action", batch["act"])
    b, t = act_n.shape[0], act_n.shape[1]

    hist_in, obs0_in = hist_obs_n, obs_n[:, 0]
    if train and cfg.obs_noise_std > 0:
        k1, k2 = jax.random.split(key)
        hist_in = hist_in + cfg.obs_noise_std * jax.random.normal(k1, hist_in.shape)
        obs0_in = obs0_in + cfg.obs_noise_std * jax.random.normal(k2, obs0_in.shape)

    ctx = model._context_n(hist_in, hist_act_n, obs0_in)
    z_hat = model._dynamics_n(ctx, act_n)  # [B, T, Z]: ẑ_{t+1..t+T}
    z_tgt = jax.lax.stop_gradient(model.encoder(obs_n[:, 1 : t + 1]))
    sq = (z_hat - z_tgt) ** 2
    latent_h = sq.mean(axis=(0, 2))
    latent = latent_h.mean()
    loss = cfg.w_latent * latent
    metrics: dict[str, jax.Array] = {"latent": latent, "latent_h": latent_h}

    c_n = model._command_n(batch.get("command"), (b,), t)
    z_seq = jnp.concatenate([ctx["z0"][:, None], z_hat], axis=1)
    if "reward" in batch:
        r_n = model._reward_n(z_seq[:, :-1], act_n, z_seq[:, 1:], c_n)
        r_loss = jnp.mean((r_n - norm.normalize("reward", batch["reward"])) ** 2)
        r_raw = norm.denormalize("reward", r_n)
        loss = loss + cfg.w_reward * r_loss
        metrics.update(reward=r_loss, reward_mse_raw=jnp.mean((r_raw - batch["reward"]) ** 2), reward_pred=r_raw)
    if "value" in batch:
        v_n = model._value_n(z_seq[:, 1:], c_n)
        v_loss = jnp.mean((v_n - norm.normalize("value", batch["value"])) ** 2)
        v_raw = norm.denormalize("value", v_n)
        loss = loss + cfg.w_value * v_loss
        metrics.update(value=v_loss, value_mse_raw=jnp.mean((v_raw - batch["value"]) ** 2), value_pred=v_raw)
    if "expert" in batch:
        a_hat_n = model._prior_n(ctx, c_n[:, 0])[:, :t]
        if cfg.bc_target == "relabelled":
            if "expert_action" not in batch:
                raise ConfigError("bc_target 'relabelled' needs the dataset's expert_action field")
            a_tgt = batch["expert_action"]
            mask = jnp.ones(a_tgt.shape[:-1] + (1,), jnp.float32)
        else:
            a_tgt = batch["act"]
            mask = batch["expert"].astype(jnp.float32)[..., None]  # [B, T, 1]
        a_tgt_n = norm.normalize("action", a_tgt)
        denom = jnp.maximum(mask.sum() * cfg.action_size, 1.0)
        a_loss = jnp.sum(mask * (a_hat_n - a_tgt_n) ** 2) / denom
        a_raw = norm.denormalize("action", a_hat_n)
        loss = loss + cfg.w_action * a_loss
        metrics.update(action=a_loss, bc_mse_raw=jnp.sum(mask * (a_raw - a_tgt) ** 2) / denom)
    metrics["loss"] = loss
    return loss, metrics


def r2_score(pred, target, axis=None):
    """Coefficient of determination 1 - SS_res / SS_tot (over `axis`, all by default)."""
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    ss_res = jnp.sum((pred - target) ** 2, axis=axis)
    ss_tot = jnp.sum((target - jnp.mean(target, axis=axis, keepdims=True)) ** 2, axis=axis)
    return 1.0 - ss_res / jnp.maximum(ss_tot, 1e-12)


def add_r2(metrics: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    """Add reward_r2 / value_r2 (over all B*T predictions) when the batch has the labels."""
    out = dict(metrics)
    for name in ("reward", "value"):
        if f"{name}_pred" in metrics and name in batch:
            out[f"{name}_r2"] = r2_score(metrics[f"{name}_pred"], batch[name])
    return out


@functools.partial(jax.jit, static_argnums=0)
def _eval_pure(graphdef, state, batch):
    model = nnx.merge(graphdef, state)
    _, metrics = world_model_loss(model, batch, jax.random.key(0), train=False)
    return add_r2(metrics, batch)


def evaluate_batch(model: WorldModel, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """Held-out metrics of one batch (no noise), with R² of reward and value; numpy values."""
    graphdef, state = nnx.split(model)
    out = _eval_pure(graphdef, state, {k: jnp.asarray(v) for k, v in batch.items()})
    return {k: np.asarray(v) for k, v in out.items()}
