"""Actor-critic networks in flax nnx, and pure functions over their split state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

_ACTIVATIONS = {"elu": nnx.elu, "tanh": nnx.tanh, "relu": nnx.relu, "silu": nnx.silu, "gelu": nnx.gelu}


class MLP(nnx.Module):
    def __init__(self, sizes: tuple[int, ...], activation: str, rngs: nnx.Rngs, last_scale: float = 1.0):
        self.layers = nnx.List(
            [
                nnx.Linear(
                    a,
                    b,
                    kernel_init=nnx.initializers.orthogonal(
                        last_scale if i == len(sizes) - 2 else jnp.sqrt(2.0)
                    ),
                    rngs=rngs,
                )
                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
            ]
        )
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)


class ActorCritic(nnx.Module):
    """A Gaussian policy with a state-independent log-std, and a separate value network."""

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        actor_hidden: tuple[int, ...],
        critic_hidden: tuple[int, ...],
        activation: str,
        init_log_std: float,
        rngs: nnx.Rngs,
    ):
        self.actor = MLP((obs_size, *actor_hidden, action_size), activation, rngs, last_scale=0.01)
        self.critic = MLP((obs_size, *critic_hidden, 1), activation, rngs, last_scale=1.0)
        self.log_std = nnx.Param(jnp.full((action_size,), init_log_std, jnp.float32))

    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.actor(obs), self.log_std[...], self.value(obs)

    def value(self, obs: jax.Array) -> jax.Array:
        return self.critic(obs)[..., 0]


def gaussian_log_prob(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    return jnp.sum(log_std + 0.5 * jnp.log(2.0 * jnp.pi * jnp.e), axis=-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> jax.Array:
    """KL(p || q) of diagonal Gaussians, summed over action dimensions."""
    var_p, var_q = jnp.exp(2 * log_std_p), jnp.exp(2 * log_std_q)
    return jnp.sum(log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5, axis=-1)
