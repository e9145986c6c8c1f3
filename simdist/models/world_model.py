"""Stage 3: the latent world model (encoder, latent dynamics, reward/value heads, policy prior).

Units and normalisation
-----------------------
The dataset's per-feature normalisation statistics live *inside* the model as `Stats`
variables (an `nnx.Variable` subclass, not `nnx.Param`): a trainer that trains `nnx.Param`
never changes them, and a checkpoint of the model state carries them. Every public method
takes RAW inputs (observations, actions, commands) and returns RAW units (reward, value,
actions); internally everything is normalised, `(x - mean) / std`. Losses are MSE in
normalised units. Latents `z` have no units.

Shapes (`...` = any leading batch dims, including none, so the planner can `vmap`)
-------------------------------------------------------------------------------
- `encode(obs[..., O]) -> z[..., Z]`
- `context(hist_obs[..., H, O], hist_act[..., H, A], obs_t[..., O]) -> ctx` (a dict):
  `ctx["z0"] = encode(obs_t)` [..., Z]; transformer only: `ctx["memory"]` [..., 2H+1, d_model].
- `dynamics(ctx, actions[..., T', A]) -> z_pred[..., T', Z]` = ẑ_{t+1..t+T'}, any T' <= horizon.
- `reward(z_k, a_k, z_next, command) -> r[...]`, `value(z, command) -> v[...]` (raw units).
- `prior(ctx, command) -> actions[..., horizon, A]` (raw units).
- `predict(ctx, actions[..., T, A], command) -> {"z": [..., T+1, Z], "reward": [..., T], "value": [..., T]}`.
  `command` is [..., C] (held over the window) or [..., T, C] (per step), or None when C == 0.
- Planner: for many action samples under one context, `jax.vmap` over the samples with the
  context unbatched (in_axes None), e.g. `vmap(lambda a: model.predict(ctx1, a, c1))(samples)`;
  the memory's cross-attention keys/values are then computed once. Or tile the context to
  the sample batch. (A batch-1 context does not broadcast against N samples.)
- A model without command (C == 0) stores no command statistics (orbax cannot save empty
  arrays); `set_stats({"command": (empty, empty)})` is accepted and ignored.

Label timing (matches the dataset): the reward label at index i is r(s_i, a_i) and the value
label at index i is V(s_{i+1}). So `reward[k] = reward(z_k, a_k, z_{k+1})` and
`value[k] = value(z_{k+1})`, with z_0 = encode(o_t) and z_{k>=1} = ẑ_{t+k}.

Design choices
--------------
- Encoder: proprio MLP (ELU) -> latent. With `height_scan_shape=(rows, cols)` the LAST
  rows*cols entries of the observation are the height scan (row-major). It goes through three
  3x3 stride-2 convs (8/16/32 ch, ELU) whose input is the height channel concatenated with
  learned row and column embeddings (4 channels each), then an MLP to the latent; proprio and
  scan features are merged by an MLP. The encoder ends with a *parameter-free* LayerNorm
  (no scale, no bias): every latent has zero mean and unit variance over its features, so
  its scale is fixed and the encoder cannot shrink the latent to make the latent loss
  trivially small.
- Context (transformer only, module `context_net`, NOT part of "dynamics"): history
  observations go through the encoder then a linear to d_model; history actions and z0 each
  through their own linear; tokens are ordered o_{t-H}, a_{t-H}, ..., o_{t-1}, a_{t-1}, z0
  (2H+1 tokens) and get a learned temporal embedding (H+1 steps; z0 is step H) plus a learned
  type embedding (obs / action / current latent).
- Transformer dynamics (module `dynamics_net`): query tokens = linear(future normalised
  actions) + learned position embeddings; N post-LayerNorm decoder layers (causal
  self-attention over the action tokens, cross-attention to the memory, GELU feed-forward);
  a linear to the latent; the prediction is residual around z0: ẑ_{t+k} = z0 + out_{k-1}.
  Causality makes the first T' predictions independent of later actions, so planning with
  T' < horizon gives exactly the prefix of a full-horizon prediction.
- MLP dynamics (TD-MPC2 style, module `dynamics_net`): z_{k+1} = z_k + MLP([z_k, a_k])
  (hidden layers Linear -> LayerNorm -> SiLU), unrolled with `lax.scan`. It is Markov in z:
  `ctx` holds only "z0"; the history is not used.
- "Dynamics" parameters (filter `DYNAMICS`) = everything under `dynamics_net`: for the
  transformer, the future-action embedding, the query position embeddings, the decoder
  layers and the output projection; for the MLP, its MLP. Encoder, context tokeniser, heads,
  prior and stats are outside it.
- ReDRAW residual (`residual_hidden > 0`, module `residual_net`):
  δ(z, a) = Linear_zero(SiLU(LayerNorm(Linear([z, a_norm])))) with the last layer's kernel
  and bias initialised to zero. Transformer: applied sequentially per output token,
  z'_0 = z0, z'_{k+1} = ẑ_{k+1} + δ(z'_k, a_k) (ẑ from the one-pass decoder). MLP:
  z_{k+1} = z_k + MLP([z_k, a_k]) + δ(z_k, a_k). A fresh residual adds exact zeros, so the
  predictions are bit-identical to the model without it.
- Reward head: MLP([z_k, a_k, z_{k+1}, c_k]); value head: MLP([z, c]); policy prior: an MLP
  from [z0, c_t] to the whole normalised action chunk a_t..a_{t+horizon-1} (a simplification
  of the reference's causal transformer decoder).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.config import from_dict as _from_dict
from simdist.errors import ConfigError

DYNAMICS_KINDS = ("transformer", "mlp")
BC_TARGETS = ("expert", "relabelled")
STAT_NAMES = ("obs", "action", "command", "reward", "value")
MIN_STD = 1e-6  # stds are floored here when set, so constant features do not divide by zero
_POS_EMB_INIT = nnx.initializers.normal(0.02)
_SCAN_EMB = 4  # channels of each learned row / column embedding of the height scan


@dataclasses.dataclass(frozen=True)
class WorldModelConfig:
    obs_size: int
    action_size: int
    command_size: int = 0
    latent_size: int = 64
    encoder_hidden: tuple[int, ...] = (128, 128)
    history: int = 8
    horizon: int = 16
    dynamics: str = "transformer"  # "transformer" (the reference) | "mlp" (TD-MPC2-style, unrolled)
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 4
    mlp_dynamics_hidden: tuple[int, ...] = (256, 256)
    head_hidden: tuple[int, ...] = (128, 128)
    residual_hidden: int = 0  # > 0: a ReDRAW residual block exists
    height_scan_shape: tuple[int, int] | None = None  # the obs vector's LAST rows*cols entries
    w_latent: float = 1.0
    w_reward: float = 1.0
    w_value: float = 1.0
    w_action: float = 4.0
    # Behaviour-cloning target of the policy prior: "expert" = the executed action on clean
    # expert steps only (the reference); "relabelled" = the expert's own action at EVERY step
    # (the dataset's `expert_action`, DAgger-style), so the prior also learns recoveries.
    bc_target: str = "expert"
    # True: the policy prior also reads the history context (the memory tokens of the
    # transformer dynamics, flattened), as the reference's prior cross-attends to the context,
    # so it can infer from the recent past what the current observation does not show (a slip,
    # low friction). False: the prior reads z0 and the command only.
    prior_context: bool = False
    obs_noise_std: float = 0.0  # training input noise, normalised units, observation inputs only

    def __post_init__(self):
        def bad(msg: str):
            raise ConfigError(f"WorldModelConfig: {msg}")

        if self.obs_size < 1 or self.action_size < 1 or self.command_size < 0:
            bad("obs_size and action_size must be >= 1 and command_size >= 0")
        if self.latent_size < 1 or self.history < 1 or self.horizon < 1:
            bad("latent_size, history and horizon must be >= 1")
        if self.dynamics not in DYNAMICS_KINDS:
            bad(f"unknown dynamics '{self.dynamics}' (choose from {', '.join(DYNAMICS_KINDS)})")
        if self.d_model < 1 or self.n_heads < 1 or self.n_layers < 1 or self.ff_mult < 1:
            bad("d_model, n_heads, n_layers and ff_mult must be >= 1")
        if self.d_model % self.n_heads:
            bad(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        for name in ("encoder_hidden", "mlp_dynamics_hidden", "head_hidden"):
            if any(int(h) < 1 for h in getattr(self, name)):
                bad(f"{name} sizes must be >= 1")
        if self.residual_hidden < 0:
            bad("residual_hidden must be >= 0")
        if self.height_scan_shape is not None:
            if len(self.height_scan_shape) != 2 or min(self.height_scan_shape) < 1:
                bad("height_scan_shape must be (rows, cols) with both >= 1")
            rows, cols = self.height_scan_shape
            if rows * cols >= self.obs_size:
                bad(f"height scan {rows}x{cols} leaves no proprioception in obs_size {self.obs_size}")
        if min(self.w_latent, self.w_reward, self.w_value, self.w_action) < 0:
            bad("loss weights must be >= 0")
        if self.obs_noise_std < 0:
            bad("obs_noise_std must be >= 0")
        if self.prior_context and self.dynamics != "transformer":
            bad("prior_context needs the transformer dynamics (its context tokens); set prior_context=false for the MLP dynamics")
        if self.bc_target not in BC_TARGETS:
            bad(f"unknown bc_target '{self.bc_target}' (choose from {', '.join(BC_TARGETS)})")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WorldModelConfig":
        return _from_dict(cls, data)


# ---- building blocks ----------------------------------------------------------------------


class Stats(nnx.Variable):
    """Dataset normalisation statistics: not trained (not an `nnx.Param`), saved with the model."""


def layer_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Parameter-free LayerNorm over the last axis."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class MLP(nnx.Module):
    """Linear layers with an activation (optionally Linear -> LayerNorm -> act) between them."""

    def __init__(self, sizes, rngs: nnx.Rngs, activation=nnx.elu, layer_norm: bool = False):
        sizes = [int(s) for s in sizes]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.norms = nnx.List([nnx.LayerNorm(b, rngs=rngs) for b in sizes[1:-1]] if layer_norm else [])
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers[:-1]):
            x = layer(x)
            if len(self.norms):
                x = self.norms[i](x)
            x = self.activation(x)
        return self.layers[-1](x)


def _stat_shapes(cfg: WorldModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"obs": (cfg.obs_size,), "action": (cfg.action_size,), "command": (cfg.command_size,)}
    if cfg.command_size == 0:
        del shapes["command"]
    return shapes | {"reward": (), "value": ()}


class Normalizer(nnx.Module):
    """Mean/std per stat name; `Stats` variables `<name>_mean`, `<name>_std`."""

    def __init__(self, cfg: WorldModelConfig):
        self.cfg = cfg
        for name, shape in _stat_shapes(cfg).items():  # no command stats when C == 0 (orbax rejects empty arrays)
            setattr(self, f"{name}_mean", Stats(jnp.zeros(shape, jnp.float32)))
            setattr(self, f"{name}_std", Stats(jnp.ones(shape, jnp.float32)))

    def set(self, name: str, mean, std) -> None:
        shapes = _stat_shapes(self.cfg)
        if name == "command" and self.cfg.command_size == 0:
            if np.size(mean) or np.size(std):
                raise ConfigError(f"statistic 'command' has size {np.size(mean)}, the model takes no command")
            return
        if name not in shapes:
            raise ConfigError(f"unknown statistic '{name}' (expected one of {', '.join(STAT_NAMES)})")
        shape = shapes[name]
        mean = np.asarray(mean, np.float32)
        std = np.asarray(std, np.float32)
        if mean.size != math.prod(shape) or std.size != math.prod(shape):
            raise ConfigError(
                f"statistic '{name}' has size {mean.size}/{std.size}, the model expects {math.prod(shape)}"
            )
        getattr(self, f"{name}_mean").set_value(jnp.asarray(mean.reshape(shape)))
        getattr(self, f"{name}_std").set_value(jnp.asarray(np.maximum(std.reshape(shape), MIN_STD)))

    def get(self, name: str) -> tuple[jax.Array, jax.Array]:
        return getattr(self, f"{name}_mean")[...], getattr(self, f"{name}_std")[...]

    def normalize(self, name: str, x: jax.Array) -> jax.Array:
        mean, std = self.get(name)
        return (x - mean) / std

    def denormalize(self, name: str, x: jax.Array) -> jax.Array:
        mean, std = self.get(name)
        return x * std + mean


class Encoder(nnx.Module):
    def __init__(self, cfg: WorldModelConfig, rngs: nnx.Rngs):
        z = cfg.latent_size
        hidden = tuple(cfg.encoder_hidden)
        self.scan_shape = cfg.height_scan_shape
        if self.scan_shape is None:
            self.proprio = MLP((cfg.obs_size, *hidden, z), rngs)
            return
        rows, cols = self.scan_shape
        self.n_proprio = cfg.obs_size - rows * cols
        self.proprio = MLP((self.n_proprio, *hidden, z), rngs)
        self.row_emb = nnx.Param(_POS_EMB_INIT(rngs.params(), (rows, _SCAN_EMB)))
        self.col_emb = nnx.Param(_POS_EMB_INIT(rngs.params(), (cols, _SCAN_EMB)))
        chans = (1 + 2 * _SCAN_EMB, 8, 16, 32)
        self.convs = nnx.List(
            [nnx.Conv(a, b, (3, 3), strides=2, padding="SAME", rngs=rngs) for a, b in zip(chans[:-1], chans[1:])]
        )
        r, c = rows, cols
        for _ in range(3):
            r, c = -(-r // 2), -(-c // 2)
        self.scan_mlp = MLP((r * c * chans[-1], hidden[-1], z), rngs)
        self.merge = MLP((2 * z, hidden[-1], z), rngs)

    def __call__(self, obs_n: jax.Array) -> jax.Array:
        """Normalised observation [..., O] -> latent [..., Z] (LayerNorm'd)."""
        if self.scan_shape is None:
            return layer_norm(self.proprio(obs_n))
        rows, cols = self.scan_shape
        lead = obs_n.shape[:-1]
        prop = self.proprio(obs_n[..., : self.n_proprio])
        scan = obs_n[..., self.n_proprio :].reshape((-1, rows, cols, 1))
        n = scan.shape[0]
        row = jnp.broadcast_to(self.row_emb[...][None, :, None, :], (n, rows, cols, _SCAN_EMB))
        col = jnp.broadcast_to(self.col_emb[...][None, None, :, :], (n, rows, cols, _SCAN_EMB))
        x = jnp.concatenate([scan, row, col], axis=-1)
        for conv in self.convs:
            x = nnx.elu(conv(x))
        feat = self.scan_mlp(x.reshape((n, -1))).reshape(lead + (-1,))
        return layer_norm(self.merge(nnx.elu(jnp.concatenate([prop, feat], axis=-1))))


class ContextTokenizer(nnx.Module):
    """History (obs, action) pairs and z0 -> memory tokens [..., 2H+1, d_model]."""

    def __init__(self, cfg: WorldModelConfig, rngs: nnx.Rngs):
        d = cfg.d_model
        self.obs_proj = nnx.Linear(cfg.latent_size, d, rngs=rngs)
        self.act_proj = nnx.Linear(cfg.action_size, d, rngs=rngs)
        self.z_proj = nnx.Linear(cfg.latent_size, d, rngs=rngs)
        self.time_emb = nnx.Param(_POS_EMB_INIT(rngs.params(), (cfg.history + 1, d)))
        self.type_emb = nnx.Param(_POS_EMB_INIT(rngs.params(), (3, d)))

    def __call__(self, z_hist: jax.Array, a_hist_n: jax.Array, z0: jax.Array) -> jax.Array:
        h = z_hist.shape[-2]
        time = self.time_emb[...]
        types = self.type_emb[...]
        o = self.obs_proj(z_hist) + time[:h] + types[0]
        a = self.act_proj(a_hist_n) + time[:h] + types[1]
        pairs = jnp.stack([o, a], axis=-2)  # [..., H, 2, d]
        pairs = pairs.reshape(pairs.shape[:-3] + (2 * h, pairs.shape[-1]))
        cur = self.z_proj(z0) + time[h] + types[2]
        return jnp.concatenate([pairs, cur[..., None, :]], axis=-2)


class DecoderLayer(nnx.Module):
    """Post-LayerNorm transformer decoder layer: causal self-attn, cross-attn, GELU FF."""

    def __init__(self, cfg: WorldModelConfig, rngs: nnx.Rngs):
        d = cfg.d_model
        kw = dict(decode=False, deterministic=True, keep_rngs=False, rngs=rngs)
        self.self_attn = nnx.MultiHeadAttention(cfg.n_heads, d, **kw)
        self.cross_attn = nnx.MultiHeadAttention(cfg.n_heads, d, **kw)
        self.ln1 = nnx.LayerNorm(d, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, rngs=rngs)
        self.ln3 = nnx.LayerNorm(d, rngs=rngs)
        self.ff1 = nnx.Linear(d, cfg.ff_mult * d, rngs=rngs)
        self.ff2 = nnx.Linear(cfg.ff_mult * d, d, rngs=rngs)

    def __call__(self, x: jax.Array, memory: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.ln1(x + self.self_attn(x, mask=mask))
        x = self.ln2(x + self.cross_attn(x, memory))
        return self.ln3(x + self.ff2(nnx.gelu(self.ff1(x))))


class TransformerDynamics(nnx.Module):
    def __init__(self, cfg: WorldModelConfig, rngs: nnx.Rngs):
        d = cfg.d_model
        self.horizon = cfg.horizon
        self.act_emb = nnx.Linear(cfg.action_size, d, rngs=rngs)
        self.pos_emb = nnx.Param(_POS_EMB_INIT(rngs.params(), (cfg.horizon, d)))
        self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.n_layers)])
        self.out = nnx.Linear(d, cfg.latent_size, rngs=rngs)

    def __call__(self, z0: jax.Array, memory: jax.Array, a_n: jax.Array) -> jax.Array:
        t = a_n.shape[-2]
        x = self.act_emb(a_n) + self.pos_emb[...][:t]
        mask = nnx.make_causal_mask(jnp.ones((t,), jnp.int32))  # [1, T, T]
        for layer in self.layers:
            x = layer(x, memory, mask)
        return z0[..., None, :] + self.out(x)


class MLPDynamics(nnx.Module):
    def __init__(self, cfg: WorldModelConfig, rngs: nnx.Rngs):
        z = cfg.latent_size
        self.net = MLP((z + cfg.action_size, *cfg.mlp_dynamics_hidden, z), rngs, nnx.silu, layer_norm=True)

    def __call__(self, z: jax.Array, a_n: jax.Array) -> jax.Array:
        """One step: z_{k+1} = z_k + MLP([z_k, a_k])."""
        return z + self.net(jnp.concatenate([z, a_n], axis=-1))


class Residual(nnx.Module):
    """ReDRAW latent residual δ(z, a); its last layer starts at exactly zero."""

    def __init__(self, cfg: WorldModelConfig, rngs: nnx.Rngs):
        z, h = cfg.latent_size, cfg.residual_hidden
        self.fc1 = nnx.Linear(z + cfg.action_size, h, rngs=rngs)
        self.ln = nnx.LayerNorm(h, rngs=rngs)
        zeros = nnx.initializers.zeros_init()
        self.fc2 = nnx.Linear(h, z, kernel_init=zeros, bias_init=zeros, rngs=rngs)

    def __call__(self, z: jax.Array, a_n: jax.Array) -> jax.Array:
        return self.fc2(nnx.silu(self.ln(self.fc1(jnp.concatenate([z, a_n], axis=-1)))))


def _time_major(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, -2, 0)


def _batch_major(x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, 0, -2)


# ---- the model ---------------------------------------------------------------------------


class WorldModel(nnx.Module):
    def __init__(self, cfg: WorldModelConfig, *, rngs: nnx.Rngs, stats: dict[str, Any] | None = None):
        self.cfg = cfg
        z, a, c = cfg.latent_size, cfg.action_size, cfg.command_size
        self.norm = Normalizer(cfg)
        self.encoder = Encoder(cfg, rngs)
        if cfg.dynamics == "transformer":
            self.context_net = ContextTokenizer(cfg, rngs)
            self.dynamics_net = TransformerDynamics(cfg, rngs)
        else:
            self.dynamics_net = MLPDynamics(cfg, rngs)
        self.reward_head = MLP((2 * z + a + c, *cfg.head_hidden, 1), rngs)
        self.value_head = MLP((z + c, *cfg.head_hidden, 1), rngs)
        prior_in = z + c + ((2 * cfg.history + 1) * cfg.d_model if cfg.prior_context else 0)
        self.prior_head = MLP((prior_in, *cfg.head_hidden, cfg.horizon * a), rngs)
        # Created last so that the other parameters do not depend on whether it exists.
        if cfg.residual_hidden > 0:
            self.residual_net = Residual(cfg, rngs)
        if stats is not None:
            self.set_stats(stats)

    @property
    def has_residual(self) -> bool:
        return self.cfg.residual_hidden > 0

    # ---- statistics -----------------------------------------------------------------------
    def set_stats(self, stats: dict[str, Any]) -> None:
        """Set normalisation statistics: {name: (mean, std)} for names in STAT_NAMES."""
        for name, (mean, std) in stats.items():
            self.norm.set(name, mean, std)

    def get_stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{name: (mean, std)} as numpy; a model without command has no 'command' entry."""
        return {n: tuple(np.asarray(v) for v in self.norm.get(n)) for n in _stat_shapes(self.cfg)}

    # ---- normalised-unit internals (used by the loss) ---------------------------------------
    def _command_n(self, command, lead: tuple[int, ...], steps: int | None) -> jax.Array:
        """Normalised command broadcast to lead + (steps, C) (or lead + (C,) when steps is None)."""
        c = self.cfg.command_size
        shape = lead + ((steps,) if steps is not None else ()) + (c,)
        if c == 0:
            return jnp.zeros(shape, jnp.float32)
        if command is None:
            raise ConfigError(f"this world model needs a command of size {c}")
        cmd = self.norm.normalize("command", jnp.asarray(command, jnp.float32))
        if steps is not None and cmd.ndim == len(lead) + 1:
            cmd = cmd[..., None, :]
        return jnp.broadcast_to(cmd, shape)

    def _context_n(self, hist_obs_n, hist_act_n, obs_n) -> dict[str, jax.Array]:
        z0 = self.encoder(obs_n)
        if self.cfg.dynamics != "transformer":
            return {"z0": z0}
        z_hist = self.encoder(hist_obs_n)
        memory = self.context_net(z_hist, hist_act_n, z0)
        # The encoded history is kept so that `prior_rollout` can shift it in imagination.
        return {"z0": z0, "memory": memory, "z_hist": z_hist, "a_hist": hist_act_n}

    def _dynamics_n(self, ctx, a_n: jax.Array) -> jax.Array:
        t = a_n.shape[-2]
        if t > self.cfg.horizon:
            raise ConfigError(f"cannot predict {t} steps with a world model of horizon {self.cfg.horizon}")
        z0 = ctx["z0"]
        if self.cfg.dynamics == "transformer":
            z_hat = self.dynamics_net(z0, ctx["memory"], a_n)
            if not self.has_residual:
                return z_hat

            def body(z_prev, inp):
                z_k, a_k = inp
                z_new = z_k + self.residual_net(z_prev, a_k)
                return z_new, z_new

            _, zs = jax.lax.scan(body, z0, (_time_major(z_hat), _time_major(a_n)))
            return _batch_major(zs)

        def body(z, a_k):
            z_new = self.dynamics_net(z, a_k)
            if self.has_residual:
                z_new = z_new + self.residual_net(z, a_k)
            return z_new, z_new

        _, zs = jax.lax.scan(body, z0, _time_major(a_n))
        return _batch_major(zs)

    def _reward_n(self, z, a_n, z_next, c_n) -> jax.Array:
        return self.reward_head(jnp.concatenate([z, a_n, z_next, c_n], axis=-1))[..., 0]

    def _value_n(self, z, c_n) -> jax.Array:
        return self.value_head(jnp.concatenate([z, c_n], axis=-1))[..., 0]

    def _prior_n(self, ctx, c0_n) -> jax.Array:
        parts = [ctx["z0"], c0_n]
        if self.cfg.prior_context:
            mem = ctx["memory"]
            parts.append(mem.reshape(mem.shape[:-2] + (mem.shape[-2] * mem.shape[-1],)))
        out = self.prior_head(jnp.concatenate(parts, axis=-1))
        return out.reshape(out.shape[:-1] + (self.cfg.horizon, self.cfg.action_size))

    # ---- public API (raw units) -------------------------------------------------------------
    def encode(self, obs: jax.Array) -> jax.Array:
        return self.encoder(self.norm.normalize("obs", obs))

    def context(self, hist_obs: jax.Array, hist_act: jax.Array, obs_t: jax.Array) -> dict[str, jax.Array]:
        return self._context_n(
            self.norm.normalize("obs", hist_obs),
            self.norm.normalize("action", hist_act),
            self.norm.normalize("obs", obs_t),
        )

    def dynamics(self, ctx, actions: jax.Array) -> jax.Array:
        return self._dynamics_n(ctx, self.norm.normalize("action", actions))

    def reward(self, z, action, z_next, command=None) -> jax.Array:
        c_n = self._command_n(command, z.shape[:-1], None)
        r_n = self._reward_n(z, self.norm.normalize("action", action), z_next, c_n)
        return self.norm.denormalize("reward", r_n)

    def value(self, z, command=None) -> jax.Array:
        return self.norm.denormalize("value", self._value_n(z, self._command_n(command, z.shape[:-1], None)))

    def prior(self, ctx, command=None) -> jax.Array:
        z0 = ctx["z0"]
        c0 = self._command_n(_first_command(command, z0.ndim), z0.shape[:-1], None)
        return self.norm.denormalize("action", self._prior_n(ctx, c0))

    def prior_rollout(self, ctx, command=None, steps: int | None = None) -> jax.Array:
        """The policy prior rolled closed-loop through the dynamics: ``actions[..., steps, A]``.

        a_0 is the prior's first action at z0; a_k is its first action at the latent the
        dynamics predicts after a_0 .. a_{k-1}, with the history window shifted by the
        imagined (latent, action) pairs as it would be at real step t + k. So the
        proposal follows what the dynamics expects to happen (TD-MPC2's policy trajectories),
        where `prior` is the open-loop chunk read at z0 only.
        """
        steps = self.cfg.horizon if steps is None else int(steps)
        if not 1 <= steps <= self.cfg.horizon:
            raise ConfigError(f"prior_rollout needs 1 <= steps <= {self.cfg.horizon}, got {steps}")
        z = ctx["z0"]
        c0 = self._command_n(_first_command(command, z.ndim), z.shape[:-1], None)
        now = dict(ctx)  # the prior's input at imagined step k
        acts: list[jax.Array] = []
        for k in range(steps):
            a_k = self._prior_n(now, c0)[..., 0, :]
            acts.append(a_k)
            if k + 1 == steps:
                break
            z_next = self._dynamics_n(ctx, jnp.stack(acts, axis=-2))[..., -1, :]
            if "memory" in now:  # shift (z_k, a_k) into the history window, as at the next real step
                z_hist = jnp.concatenate([now["z_hist"][..., 1:, :], z[..., None, :]], axis=-2)
                a_hist = jnp.concatenate([now["a_hist"][..., 1:, :], a_k[..., None, :]], axis=-2)
                now = {**now, "z_hist": z_hist, "a_hist": a_hist, "memory": self.context_net(z_hist, a_hist, z_next)}
            now["z0"] = z = z_next
        return self.norm.denormalize("action", jnp.stack(acts, axis=-2))

    def predict(self, ctx, actions: jax.Array, command=None) -> dict[str, jax.Array]:
        a_n = self.norm.normalize("action", actions)
        z_hat = self._dynamics_n(ctx, a_n)
        z = jnp.concatenate([ctx["z0"][..., None, :], z_hat], axis=-2)
        c_n = self._command_n(command, a_n.shape[:-2], a_n.shape[-2])
        r_n = self._reward_n(z[..., :-1, :], a_n, z[..., 1:, :], c_n)
        v_n = self._value_n(z[..., 1:, :], c_n)
        return {
            "z": z,
            "reward": self.norm.denormalize("reward", r_n),
            "value": self.norm.denormalize("value", v_n),
        }


def _first_command(command, z_ndim: int):
    """The command at t: [..., C] stays, [..., T, C] -> [..., 0, :]."""
    if command is None:
        return None
    command = jnp.asarray(command)
    return command[..., 0, :] if command.ndim == z_ndim + 1 else command


# ---- filters -----------------------------------------------------------------------------

DYNAMICS = nnx.All(nnx.Param, nnx.PathContains("dynamics_net"))
RESIDUAL = nnx.All(nnx.Param, nnx.PathContains("residual_net"))
ALL_PARAMS = nnx.Param


def count_params(model: nnx.Module, flt=nnx.Param) -> int:
    """Number of scalar parameters matching an nnx filter."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, flt))))
