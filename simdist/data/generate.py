"""Stage 2 rollouts: expert and sub-optimal policies with contiguous action-noise bursts.

Everything inside one control step is a pure JAX function, vmapped over environments and
scanned over a chunk of steps (`make_chunk_fn`). The host only cuts the returned chunk into
whole episodes (`EpisodeAssembler`) and hands them to the dataset writer.

Label timing (the dataset's contract, tested against a hand-computed rollout):

    row i of an episode holds
        obs[i]     deployable observation o_i of state s_i (before the action)
        action[i]  executed action a_i (policy action plus noise, clipped to the bounds)
        command[i] task command c_i in force at s_i
        reward[i]  r(s_i, a_i): the env reward of the step s_i --a_i--> s_{i+1}
        value[i]   V(s_{i+1}): the expert critic on the privileged observation of the state
                   the step reached (before any auto-reset); 0 when s_{i+1} is a failure
                   (a terminated episode has no future)
        expert[i]  the expert policy drove and step i was in a clean (un-noised) phase
        noisy[i]   noise was added to a_i
        expert_action[i]  (when the config asks for it) the expert policy's own action at s_i,
                   un-noised and clipped, whichever policy drove: the relabelled (DAgger-style)
                   behaviour-cloning target, so the policy prior also learns how the expert
                   recovers from the perturbed and sub-optimal states

Perturbations (per environment, drawn once when the generator starts): a per-actuator noise
std from `noise_std_range`; a phase process that alternates noisy phases of `noisy_steps`
and clean phases of `clean_steps` control steps (inclusive ranges, redrawn at every phase
change, carried across episode boundaries); a `never_noised_fraction` of environments are
never noised. At each reset the expert drives with probability `expert_probability`, else a
sub-optimal snapshot chosen uniformly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from simdist.envs.mjx_env import EnvState, MjxEnv
from simdist.rl.ppo import make_policy_fn, make_value_fn


@dataclasses.dataclass(frozen=True)
class PerturbConfig:
    noise_std_range: tuple[float, float] = (0.05, 2.5)  # per-actuator std, raw action units
    noisy_steps: tuple[int, int] = (1, 49)  # inclusive range of a noisy phase's length
    clean_steps: tuple[int, int] = (25, 499)  # inclusive range of a clean phase's length
    never_noised_fraction: float = 0.025
    expert_probability: float = 0.5

    def __post_init__(self):
        from simdist.errors import ConfigError

        lo, hi = self.noise_std_range
        if not 0 <= lo <= hi:
            raise ConfigError(f"noise_std_range must satisfy 0 <= low <= high, got {self.noise_std_range}")
        for name in ("noisy_steps", "clean_steps"):
            a, b = getattr(self, name)
            if not 1 <= a <= b:
                raise ConfigError(f"{name} must satisfy 1 <= low <= high, got {(a, b)}")
        if not 0 <= self.never_noised_fraction <= 1 or not 0 <= self.expert_probability <= 1:
            raise ConfigError("never_noised_fraction and expert_probability must lie in [0, 1]")

    def expected_noisy_share(self) -> float:
        """Long-run share of noisy steps over all environments."""
        mn = sum(self.noisy_steps) / 2
        mc = sum(self.clean_steps) / 2
        return (1 - self.never_noised_fraction) * mn / (mn + mc)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    robot: str
    preset: str
    seed: int
    num_envs: int = 256
    transitions: int = 200_000  # committed transitions to reach (whole episodes, so a little more)
    chunk_steps: int = 100  # control steps per compiled call
    flush_transitions: int = 50_000  # append to the dataset when this many are waiting
    episode_length: int | None = None  # None: the expert's episode length
    perturb: PerturbConfig = PerturbConfig()
    expert_action_labels: bool = True  # store the expert's action at every step (`expert_action`)
    # Fields of the expert's env config replaced for Stage 2, e.g. (("friction_range", (0.6, 1.2)),):
    # randomise the data differently from the expert's training. Empty: the expert's env as is.
    env_overrides: tuple[tuple[str, Any], ...] = ()


# ---- the phase process -------------------------------------------------------------------


@struct.dataclass
class NoiseState:
    std: jax.Array  # [A] per-actuator noise std (zero for never-noised envs)
    noisy: jax.Array  # bool: the current phase is noisy
    remaining: jax.Array  # int: steps left in the current phase, including this one


def _randint(key, lo_hi):
    return jax.random.randint(key, (), lo_hi[0], lo_hi[1] + 1)


def init_noise(key: jax.Array, action_size: int, cfg: PerturbConfig) -> NoiseState:
    k_std, k_never, k_len = jax.random.split(key, 3)
    std = jax.random.uniform(k_std, (action_size,), minval=cfg.noise_std_range[0], maxval=cfg.noise_std_range[1])
    never = jax.random.uniform(k_never) < cfg.never_noised_fraction
    std = jnp.where(never, 0.0, std)
    # Start in a clean phase of random length so that environments are out of step.
    return NoiseState(std=std, noisy=jnp.zeros((), bool), remaining=_randint(k_len, cfg.clean_steps))


def advance_noise(ns: NoiseState, key: jax.Array, cfg: PerturbConfig) -> NoiseState:
    """Count down the current phase; at its end switch phase and draw the new length."""
    remaining = ns.remaining - 1
    switch = remaining <= 0
    noisy = jnp.where(switch, ~ns.noisy, ns.noisy)
    k_n, k_c = jax.random.split(key)
    new_len = jnp.where(noisy, _randint(k_n, cfg.noisy_steps), _randint(k_c, cfg.clean_steps))
    return ns.replace(noisy=noisy, remaining=jnp.where(switch, new_len, remaining))


def is_noised(ns: NoiseState) -> jax.Array:
    """True where this step's action gets noise (noisy phase of an env that is ever noised)."""
    return ns.noisy & jnp.any(ns.std > 0)


# ---- policies ----------------------------------------------------------------------------


class PolicyBank(NamedTuple):
    """All snapshots' parameters stacked on a leading axis; the last one is the expert."""

    params: Any
    obs_stats: Any
    expert_params: Any
    expert_obs_stats: Any
    value_scale: float
    graphdef: Any
    size: int


def make_policy_bank(snapshots) -> PolicyBank:
    if not snapshots or not snapshots[-1].is_final:
        raise ValueError("the last snapshot must be the final expert")
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    expert = snapshots[-1]
    return PolicyBank(
        params=jax.tree.map(stack, *[s.params for s in snapshots]),
        obs_stats=jax.tree.map(stack, *[s.obs_stats for s in snapshots]),
        expert_params=expert.params,
        expert_obs_stats=expert.obs_stats,
        value_scale=float(expert.config.ppo.reward_scale),
        graphdef=expert.graphdef,
        size=len(snapshots),
    )


def draw_policy(key: jax.Array, n_policies: int, expert_probability: float) -> jax.Array:
    """The expert (index n-1) with probability p, else a sub-optimal snapshot uniformly."""
    k_e, k_s = jax.random.split(key)
    expert = n_policies - 1
    if n_policies == 1:
        return jnp.asarray(expert, jnp.int32)
    sub = jax.random.randint(k_s, (), 0, n_policies - 1)
    return jnp.where(jax.random.uniform(k_e) < expert_probability, expert, sub).astype(jnp.int32)


# ---- the generator state and one chunk ----------------------------------------------------


@struct.dataclass
class GenState:
    env: EnvState
    noise: NoiseState
    policy: jax.Array  # int per env: index into the bank
    key: jax.Array


def init_gen_state(env: MjxEnv, bank: PolicyBank, cfg: PerturbConfig, key: jax.Array, num_envs: int) -> GenState:
    k_env, k_noise, k_pol, k_next = jax.random.split(key, 4)
    env_state = env.batch_reset(k_env, num_envs)
    noise = jax.vmap(lambda k: init_noise(k, env.action_size, cfg))(jax.random.split(k_noise, num_envs))
    policy = jax.vmap(lambda k: draw_policy(k, bank.size, cfg.expert_probability))(jax.random.split(k_pol, num_envs))
    gs = GenState(env=env_state, noise=noise, policy=policy, key=jax.random.split(k_next, num_envs))
    # Commit every leaf to the device, as the chunk function's outputs are: otherwise jit
    # specialises the second call on the changed placement and compiles the rollout twice.
    return jax.device_put(gs, jax.devices()[0])


def make_chunk_fn(env: MjxEnv, bank: PolicyBank, cfg: PerturbConfig, chunk_steps: int, action_low=-1.0, action_high=1.0):
    """A jitted `(GenState, bank params) -> (GenState, records [K, N, ...])`."""
    task = env.task
    policy_fn = make_policy_fn(bank.graphdef, deterministic=True)
    value_fn = make_value_fn(bank.graphdef)
    n_pol = bank.size
    expert_idx = n_pol - 1

    def all_actions(params, stats, priv):  # [S, N, A]
        return jax.vmap(lambda p, s: policy_fn(p, s, priv))(params, stats)

    def step(carry, _):
        gs, p = carry
        st = gs.env
        keys = jax.vmap(lambda k: jax.random.split(k, 4))(gs.key)
        k_next, k_eps, k_phase, k_pol = keys[:, 0], keys[:, 1], keys[:, 2], keys[:, 3]
        acts = all_actions(p["params"], p["obs_stats"], st.privileged_obs)
        n = st.privileged_obs.shape[0]
        pol_action = acts[gs.policy, jnp.arange(n)]
        noised = jax.vmap(is_noised)(gs.noise)
        eps = jax.vmap(lambda k: jax.random.normal(k, (env.action_size,)))(k_eps)
        action = pol_action + jnp.where(noised[:, None], gs.noise.std * eps, 0.0)
        action = jnp.clip(action, action_low, action_high)
        expert_action = jnp.clip(acts[expert_idx], action_low, action_high)
        command = jax.vmap(task.command)(st.info)
        new = env.batch_step(st, action)
        value = value_fn(p["expert_params"], p["expert_obs_stats"], new.final_obs) / bank.value_scale
        value = jnp.where(new.terminated, 0.0, value)
        rec = {
            "obs": st.deployable_obs,
            "action": action,
            "command": command,
            "reward": new.reward,
            "value": value,
            "expert": (gs.policy == expert_idx) & ~noised,
            "noisy": noised,
            "expert_action": expert_action,
            "policy": gs.policy,
            "done": new.done,
            "terminated": new.terminated,
        }
        noise = jax.vmap(lambda ns, k: advance_noise(ns, k, cfg))(gs.noise, k_phase)
        redraw = jax.vmap(lambda k: draw_policy(k, n_pol, cfg.expert_probability))(k_pol)
        policy = jnp.where(new.done, redraw, gs.policy)
        return (GenState(env=new, noise=noise, policy=policy, key=k_next), p), rec

    def run(gs: GenState, p):
        (gs, _), recs = jax.lax.scan(step, (gs, p), None, length=chunk_steps)
        return gs, recs

    return jax.jit(run)


def bank_params(bank: PolicyBank) -> dict[str, Any]:
    return {
        "params": bank.params,
        "obs_stats": bank.obs_stats,
        "expert_params": bank.expert_params,
        "expert_obs_stats": bank.expert_obs_stats,
    }


# ---- host side: cut chunks into whole episodes --------------------------------------------

STEP_FIELDS = ("obs", "action", "command", "reward", "value", "expert", "noisy", "expert_action")


class EpisodeAssembler:
    """Collects per-env pieces of chunks `[K, N, ...]` and emits whole episodes.

    An episode that is still running when generation stops is never emitted.
    """

    def __init__(self, num_envs: int, fields: tuple[str, ...] = STEP_FIELDS):
        self.fields = fields
        self.pending: list[list[dict[str, np.ndarray]]] = [[] for _ in range(num_envs)]
        self.ready_steps: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        self.ready_lengths: list[int] = []
        self.ready_policy: list[int] = []
        self.ready_terminated: list[int] = []

    @property
    def ready_transitions(self) -> int:
        return int(sum(self.ready_lengths))

    def add(self, recs: dict[str, np.ndarray]) -> None:
        done = recs["done"]
        k_steps, n_envs = done.shape
        for n in range(n_envs):
            ends = np.flatnonzero(done[:, n])
            start = 0
            for e in ends:
                piece = {f: recs[f][start : e + 1, n] for f in self.fields}
                parts = self.pending[n] + [piece]
                self.pending[n] = []
                for f in self.fields:
                    self.ready_steps[f].append(np.concatenate([q[f] for q in parts]))
                length = sum(len(q[self.fields[0]]) for q in parts)
                self.ready_lengths.append(length)
                self.ready_policy.append(int(recs["policy"][e, n]))
                self.ready_terminated.append(int(recs["terminated"][e, n]))
                start = e + 1
            if start < k_steps:
                self.pending[n].append({f: recs[f][start:, n] for f in self.fields})

    def take(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray] | None:
        """The ready episodes as one batch (steps, lengths, policy, terminated); clears them."""
        if not self.ready_lengths:
            return None
        steps = {f: np.concatenate(v) for f, v in self.ready_steps.items()}
        out = (
            steps,
            np.asarray(self.ready_lengths, np.int64),
            np.asarray(self.ready_policy, np.int64),
            np.asarray(self.ready_terminated, np.int64),
        )
        self.ready_steps = {f: [] for f in self.fields}
        self.ready_lengths, self.ready_policy, self.ready_terminated = [], [], []
        return out
