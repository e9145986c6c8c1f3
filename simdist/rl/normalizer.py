"""Running mean/variance normalisation of observations (parallel Welford update)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RunningStats:
    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @staticmethod
    def create(size: int) -> "RunningStats":
        return RunningStats(jnp.zeros(size, jnp.float32), jnp.ones(size, jnp.float32), jnp.zeros((), jnp.float32))

    def update(self, batch: jax.Array) -> "RunningStats":
        batch = batch.reshape(-1, batch.shape[-1])
        n = jnp.asarray(batch.shape[0], jnp.float32)
        b_mean = batch.mean(0)
        b_var = batch.var(0)
        total = self.count + n
        delta = b_mean - self.mean
        mean = self.mean + delta * n / total
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        return RunningStats(mean, m2 / total, total)

    def normalize(self, x: jax.Array, clip: float = 10.0) -> jax.Array:
        return jnp.clip((x - self.mean) / jnp.sqrt(self.var + 1e-8), -clip, clip)
