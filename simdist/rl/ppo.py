"""PPO on privileged state, as pure functions compiled whole with `jax.jit`.

One `train_iteration` call = a rollout of `unroll_length` steps in every env (`lax.scan`),
GAE, then `num_epochs` x `num_minibatches` clipped-objective updates (`lax.scan`), with
observation normalisation, an adaptive (KL-targeted) learning rate and global-norm clipping.

Time-limit truncation is bootstrapped: the reward of a truncated step gets
gamma * V(final observation) added, so the time limit is not mistaken for a failure.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from simdist.envs.mjx_env import EnvState, MjxEnv
from simdist.rl.config import PPOConfig
from simdist.rl.networks import ActorCritic, gaussian_entropy, gaussian_kl, gaussian_log_prob
from simdist.rl.normalizer import RunningStats


@struct.dataclass
class TrainState:
    params: Any  # nnx.State of the ActorCritic
    opt_state: Any
    obs_stats: RunningStats
    lr: jax.Array
    key: jax.Array
    iteration: jax.Array


@struct.dataclass
class Transition:
    obs: jax.Array  # normalised privileged observation
    raw_obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    mean: jax.Array
    log_std: jax.Array
    value: jax.Array
    reward: jax.Array
    done: jax.Array


def make_actor_critic(obs_size: int, action_size: int, cfg: PPOConfig, seed: int = 0) -> ActorCritic:
    return ActorCritic(
        obs_size,
        action_size,
        cfg.actor_hidden,
        cfg.critic_hidden,
        cfg.activation,
        cfg.init_log_std,
        rngs=nnx.Rngs(seed),
    )


def gae(rewards, values, dones, last_value, gamma: float, lam: float):
    """Generalised advantage estimates over time-major arrays [T, N]."""

    def body(carry, x):
        adv_next, v_next = carry
        r, v, d = x
        nonterminal = 1.0 - d
        delta = r + gamma * v_next * nonterminal - v
        adv = delta + gamma * lam * nonterminal * adv_next
        return (adv, v), adv

    _, adv = jax.lax.scan(body, (jnp.zeros_like(last_value), last_value), (rewards, values, dones), reverse=True)
    return adv, adv + values


class PPO:
    """Binds a PPO config to an env; holds the network's graph definition and optimiser."""

    def __init__(self, env: MjxEnv, cfg: PPOConfig, seed: int = 0):
        self.env = env
        self.cfg = cfg
        model = make_actor_critic(env.privileged_obs_size, env.action_size, cfg, seed)
        self.graphdef, self.init_params = nnx.split(model)
        self.tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam())
        self.train_iteration = jax.jit(self._train_iteration)
        self.reset_envs = jax.jit(lambda key: env.batch_reset(key, cfg.num_envs))

    # ---- pure pieces -------------------------------------------------------------------
    def apply(self, params, obs):
        return nnx.merge(self.graphdef, params)(obs)

    def value(self, params, obs):
        return nnx.merge(self.graphdef, params).value(obs)

    def normalize(self, stats: RunningStats, obs):
        return stats.normalize(obs) if self.cfg.normalize_obs else obs

    def init(self, key: jax.Array) -> TrainState:
        return TrainState(
            params=self.init_params,
            opt_state=self.tx.init(self.init_params),
            obs_stats=RunningStats.create(self.env.privileged_obs_size),
            lr=jnp.asarray(self.cfg.learning_rate, jnp.float32),
            key=key,
            iteration=jnp.zeros((), jnp.int32),
        )

    def _rollout(self, ts: TrainState, env_state: EnvState, key):
        cfg = self.cfg

        def step(es: EnvState, k):
            obs = self.normalize(ts.obs_stats, es.privileged_obs)
            mean, log_std, value = self.apply(ts.params, obs)
            log_std = jnp.broadcast_to(log_std, mean.shape)
            action = mean + jnp.exp(log_std) * jax.random.normal(k, mean.shape)
            log_prob = gaussian_log_prob(action, mean, log_std)
            nes = self.env.batch_step(es, jnp.clip(action, -1.0, 1.0))
            final_value = self.value(ts.params, self.normalize(ts.obs_stats, nes.final_obs))
            reward = nes.reward * cfg.reward_scale + cfg.gamma * final_value * nes.truncated
            tr = Transition(
                obs=obs,
                raw_obs=es.privileged_obs,
                action=action,
                log_prob=log_prob,
                mean=mean,
                log_std=log_std,
                value=value,
                reward=reward,
                done=nes.done.astype(jnp.float32),
            )
            episodes = (jnp.where(nes.done, nes.completed_return, 0.0), nes.done.astype(jnp.float32), nes.reward)
            return nes, (tr, episodes)

        keys = jax.random.split(key, cfg.unroll_length)
        return jax.lax.scan(step, env_state, keys)

    def _loss(self, params, mb: Transition, adv, target):
        cfg = self.cfg
        mean, log_std, value = self.apply(params, mb.obs)
        log_std = jnp.broadcast_to(log_std, mean.shape)
        log_prob = gaussian_log_prob(mb.action, mean, log_std)
        ratio = jnp.exp(log_prob - mb.log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv))
        v_clipped = mb.value + jnp.clip(value - mb.value, -cfg.clip_eps, cfg.clip_eps)
        v_loss = jnp.mean(jnp.maximum((value - target) ** 2, (v_clipped - target) ** 2))
        entropy = jnp.mean(gaussian_entropy(log_std))
        kl = jnp.mean(gaussian_kl(mb.mean, mb.log_std, mean, log_std))
        loss = pg_loss + cfg.value_coef * v_loss - cfg.entropy_coef * entropy
        return loss, {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, "kl": kl}

    def _minibatch(self, carry, batch):
        params, opt_state, lr = carry
        mb, adv, target = batch
        grads, aux = jax.grad(self._loss, has_aux=True)(params, mb, adv, target)
        if self.cfg.desired_kl is not None:
            dkl, kl = self.cfg.desired_kl, jax.lax.stop_gradient(aux["kl"])
            lr = jnp.where(kl > 2.0 * dkl, jnp.maximum(lr / 1.5, 1e-5), lr)
            lr = jnp.where(kl < 0.5 * dkl, jnp.minimum(lr * 1.5, 1e-2), lr)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -lr * u, updates))
        return (params, opt_state, lr), aux

    def _train_iteration(self, ts: TrainState, env_state: EnvState):
        cfg = self.cfg
        key, k_roll, k_epochs = jax.random.split(ts.key, 3)
        env_state, (traj, (ret_sum, done_count, raw_reward)) = self._rollout(ts, env_state, k_roll)
        last_value = self.value(ts.params, self.normalize(ts.obs_stats, env_state.privileged_obs))
        adv, target = gae(traj.reward, traj.value, traj.done, last_value, cfg.gamma, cfg.gae_lambda)

        n = cfg.num_envs * cfg.unroll_length
        flat = jax.tree.map(lambda x: x.reshape((n,) + x.shape[2:]), (traj, adv, target))

        def epoch(carry, k):
            perm = jax.random.permutation(k, n)
            mbs = jax.tree.map(lambda x: x[perm].reshape((cfg.num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(self._minibatch, carry, mbs)

        (params, opt_state, lr), aux = jax.lax.scan(
            epoch, (ts.params, ts.opt_state, ts.lr), jax.random.split(k_epochs, cfg.num_epochs)
        )
        obs_stats = ts.obs_stats.update(traj.raw_obs) if cfg.normalize_obs else ts.obs_stats
        episodes = done_count.sum()
        metrics = {k: v.mean() for k, v in aux.items()}
        metrics.update(
            episode_return=ret_sum.sum() / jnp.maximum(episodes, 1.0),
            episodes=episodes,
            reward_per_step=raw_reward.mean(),
            learning_rate=lr,
            params_finite=jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(params)])).astype(
                jnp.float32
            ),
        )
        new_ts = TrainState(params, opt_state, obs_stats, lr, key, ts.iteration + 1)
        return new_ts, env_state, metrics


def make_policy_fn(graphdef, deterministic: bool = True):
    """A pure `(params, obs_stats, obs, key) -> action in [-1, 1]` function."""

    def policy(params, obs_stats: RunningStats, obs, key=None):
        mean, log_std, _ = nnx.merge(graphdef, params)(obs_stats.normalize(obs))
        if not deterministic and key is not None:
            mean = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
        return jnp.clip(mean, -1.0, 1.0)

    return policy


def make_value_fn(graphdef):
    """A pure `(params, obs_stats, obs) -> V(obs)` function (in `reward_scale` units)."""

    def value(params, obs_stats: RunningStats, obs):
        return nnx.merge(graphdef, params).value(obs_stats.normalize(obs))

    return value


def make_evaluator(env: MjxEnv, act, num_envs: int):
    """A jitted `(act_params, key) -> return per env` for `act(act_params, obs, key) -> action`.

    Each env runs one episode of `episode_length` control steps from reset; reward after the
    first end of episode is not counted. Compiled once; call it with any parameters.
    """

    def run(act_params, key):
        k_reset, k_run = jax.random.split(key)
        state = env.batch_reset(k_reset, num_envs)

        def body(carry, k):
            st, alive, ret = carry
            action = act(act_params, st.privileged_obs, k)
            st = env.batch_step(st, action)
            ret = ret + jnp.where(alive, st.reward, 0.0)
            alive = alive & ~st.done
            return (st, alive, ret), None

        init = (state, jnp.ones(num_envs, bool), jnp.zeros(num_envs))
        keys = jax.random.split(k_run, env.config.episode_length)
        (_, _, ret), _ = jax.lax.scan(body, init, keys)
        return ret

    return jax.jit(run)


def random_action(env: MjxEnv):
    """`act(_, obs, key)` of a uniformly random policy, for baselines."""
    return lambda _, obs, key: jax.random.uniform(key, (obs.shape[0], env.action_size), minval=-1.0, maxval=1.0)


def snapshot_action(graphdef):
    """`act((params, obs_stats), obs, key)` of a deterministic policy."""
    policy = make_policy_fn(graphdef, deterministic=True)
    return lambda p, obs, key: policy(p[0], p[1], obs)
