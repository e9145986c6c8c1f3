"""A reusable world-model trainer: pretraining (all params), finetuning (dynamics or residual).

The model is split with an nnx filter into (graphdef, trainable, frozen). The optimiser state
covers only the trainable part; the frozen part (other params and the normalisation `Stats`)
is passed through the jitted step untouched, so it stays bit-identical. One `jax.jit`'ed pure
step `(trainable, frozen, opt_state, batch, key) -> (trainable, opt_state, metrics)`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from simdist.errors import ConfigError
from simdist.models.loss import add_r2, world_model_loss
from simdist.models.world_model import WorldModel
from simdist.training import Stage


def make_schedule(lr_peak: float, lr_final: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup to lr_peak (step 0 uses lr_peak / warmup_steps, never 0), then cosine to lr_final
    at total_steps, constant lr_final afterwards."""
    if lr_peak <= 0 or lr_final < 0:
        raise ConfigError(f"learning rates must be positive (peak {lr_peak}, final {lr_final})")
    if warmup_steps < 0 or total_steps < 1:
        raise ConfigError(f"bad schedule: warmup_steps {warmup_steps}, total_steps {total_steps}")
    warm = max(int(warmup_steps), 1)
    decay = max(int(total_steps) - int(warmup_steps), 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        lr_warm = lr_peak * jnp.minimum(1.0, (count + 1.0) / warm)
        frac = jnp.clip((count - warmup_steps) / decay, 0.0, 1.0)
        lr_cos = lr_final + 0.5 * (lr_peak - lr_final) * (1.0 + jnp.cos(jnp.pi * frac))
        return jnp.where(count < warmup_steps, lr_warm, lr_cos)

    return schedule


def make_optimizer(
    lr_peak: float,
    lr_final: float,
    warmup_steps: int,
    total_steps: int,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam (AdamW when weight_decay > 0) with global-norm clipping and warmup + cosine schedule."""
    schedule = make_schedule(lr_peak, lr_final, warmup_steps, total_steps)
    parts = []
    if grad_clip and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if weight_decay > 0:
        parts.append(optax.adamw(schedule, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(schedule))
    return optax.chain(*parts)


LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


class WorldModelTrainer:
    """Trains the part of a WorldModel selected by `trainable` (an nnx filter)."""

    def __init__(
        self,
        model: WorldModel,
        tx: optax.GradientTransformation,
        trainable: Any = nnx.Param,
        loss_fn: LossFn = world_model_loss,
    ):
        self.tx = tx
        self.trainable_filter = trainable
        self.loss_fn = loss_fn
        self.graphdef, self.trainable, self.frozen = nnx.split(model, trainable, ...)
        if not jax.tree.leaves(self.trainable):
            raise ConfigError("no parameters of this world model match the trainable filter")
        self.opt_state = tx.init(self.trainable)
        self.steps = 0
        graphdef = self.graphdef

        def step(trainable, frozen, opt_state, batch, key):
            def f(p):
                return loss_fn(nnx.merge(graphdef, p, frozen), batch, key, train=True)

            (_, metrics), grads = jax.value_and_grad(f, has_aux=True)(trainable)
            updates, opt_state = tx.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            metrics = {k: v for k, v in metrics.items() if v.ndim <= 1}  # scalars and per-horizon
            metrics["grad_norm"] = optax.tree.norm(grads)
            return trainable, opt_state, metrics

        def evaluate(trainable, frozen, batch):
            _, metrics = loss_fn(nnx.merge(graphdef, trainable, frozen), batch, jax.random.key(0), train=False)
            return add_r2(metrics, batch)

        self._step = jax.jit(step)
        self._eval = jax.jit(evaluate)

    # ---- training ---------------------------------------------------------------------------
    def step(self, batch: dict[str, Any], key: jax.Array) -> dict[str, jax.Array]:
        """One optimiser step; returns metrics (incl. `loss`; the caller checks finiteness)."""
        self.trainable, self.opt_state, metrics = self._step(self.trainable, self.frozen, self.opt_state, batch, key)
        self.steps += 1
        return metrics

    def evaluate(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """Metrics without noise (train=False), with reward_r2 / value_r2 when labelled."""
        return self._eval(self.trainable, self.frozen, batch)

    def model(self) -> WorldModel:
        """The current model (a fresh object merged from the current state)."""
        return nnx.merge(self.graphdef, self.trainable, self.frozen)

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Pure pytrees for orbax: the whole model state (params and stats), the optimiser
        state's leaves, and the step count. Restoring it resumes bit-exactly."""
        _, full = nnx.split(self.model())
        return {
            "model": nnx.to_pure_dict(full),
            "opt_state": jax.tree.leaves(self.opt_state),
            "step": np.asarray(self.steps, np.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        graphdef, full = nnx.split(self.model())
        nnx.replace_by_pure_dict(full, jax.tree.map(jnp.asarray, state["model"]))
        model = nnx.merge(graphdef, full)
        _, self.trainable, self.frozen = nnx.split(model, self.trainable_filter, ...)
        leaves = [jnp.asarray(x) for x in state["opt_state"]]
        treedef = jax.tree.structure(self.opt_state)
        if len(leaves) != treedef.num_leaves:
            raise ConfigError(
                f"optimiser state has {len(leaves)} arrays, this trainer expects {treedef.num_leaves}"
            )
        self.opt_state = jax.tree.unflatten(treedef, leaves)
        self.steps = int(np.asarray(state["step"]))


class WorldModelStage(Stage):
    """A training-loop stage of a WorldModelTrainer: step k trains on `batch(k)` with the key
    fold_in(key(seed), k), so a resumed run draws what an uninterrupted one draws. Subclasses
    (distill, finetune) supply `batch`, `evaluate` and `finish`."""

    def __init__(self, trainer: WorldModelTrainer, seed: int, batch_size: int):
        self.trainer, self.batch_size = trainer, batch_size
        self.key = jax.random.key(seed)
        self.t0, self.done = time.perf_counter(), 0

    def batch(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return self.trainer.state_dict()

    def load(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.trainer.load_state_dict(state)

    def step(self, step: int) -> dict[str, Any]:
        if self.done == 0:
            self.t0 = time.perf_counter()
        batch = self.batch(step)
        self.done += 1
        return {"loss": self.trainer.step(batch, jax.random.fold_in(self.key, step))["loss"]}

    def row(self, step: int, metrics: list[dict[str, float]], **heldout: float) -> dict[str, Any]:
        """A history row: the step, the mean training loss since the last evaluation, `heldout`."""
        loss = float(np.mean([m["loss"] for m in metrics])) if metrics else None
        rate = self.done * self.batch_size / max(time.perf_counter() - self.t0, 1e-9)
        return {"step": step, "train_loss": loss, **heldout, "windows_per_s": rate}
