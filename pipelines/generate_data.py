"""Stage 2: perturbed-action rollouts of the expert and its snapshots, into a tensorstore dataset.

`generate_data(cfg, expert_dir, out)` rolls out `cfg.num_envs` MJX environments with domain
randomisation, cuts the rollouts into whole episodes and appends them to the dataset at
`out` in batches. Each append commits atomically, so a killed run leaves a dataset with whole
episodes only; running the command again continues it up to `cfg.transitions`. A Ctrl-C
during an append waits until the append has committed.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from simdist.config import replace_checked, to_dict, with_overrides
from simdist.data.dataset import Dataset, DatasetSpec
from simdist.data.generate import (
    STEP_FIELDS,
    EpisodeAssembler,
    GenerateConfig,
    bank_params,
    init_gen_state,
    make_chunk_fn,
    make_policy_bank,
)
from simdist.envs import MjxEnv
from simdist.errors import ConfigError, DatasetError
from simdist.progress import console, deferred_interrupt, progress_bar
from simdist.rl.policy import load_snapshots
from simdist.robots import get_robot


@dataclass
class GenerateResult:
    out: Path
    transitions: int
    episodes: int
    added_transitions: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.added_transitions / max(self.seconds, 1e-9)


def make_config(robot: str, preset: str, seed: int, overrides: dict[str, Any] | None = None) -> GenerateConfig:
    cfg = get_robot(robot).data_config(preset, seed)
    return with_overrides(cfg, overrides or {})


def dataset_spec(robot_name: str, task, control_dt: float, expert_action: bool = False) -> DatasetSpec:
    return DatasetSpec(
        robot=robot_name,
        source="sim",
        control_dt=float(control_dt),
        obs_size=len(task.deployable_obs_names),
        action_size=task.action_size,
        command_size=task.command_size,
        labels=True,
        obs_names=tuple(task.deployable_obs_names),
        expert_action=expert_action,
    )


def generate_data(
    cfg: GenerateConfig,
    expert_dir: Path,
    out: Path,
    *,
    show_progress: bool = True,
    stop_after_appends: int | None = None,
) -> GenerateResult:
    """Generate (or continue) the dataset at `out`. `stop_after_appends` ends this invocation
    after that many commits (used to test resumption)."""
    out = Path(out)
    snaps = load_snapshots(expert_dir, cfg.robot)
    if not snaps[-1].is_final:
        raise ConfigError(f"{expert_dir} has no final expert yet; finish it with `simdist train-expert`")
    expert_cfg = snaps[-1].config
    env_cfg = expert_cfg.env
    if cfg.episode_length is not None:
        env_cfg = dataclasses.replace(env_cfg, episode_length=cfg.episode_length)
    env_cfg = dataclasses.replace(env_cfg, randomize=True)
    if cfg.env_overrides:
        env_cfg = replace_checked(env_cfg, dict(cfg.env_overrides), "generate-data --env-set")
    robot = get_robot(cfg.robot)
    task = robot.make_task(env_cfg)
    env = MjxEnv(task)
    spec = dataset_spec(cfg.robot, task, env_cfg.ctrl_dt, expert_action=cfg.expert_action_labels)
    extra = {
        "generate": to_dict(cfg),
        "expert_dir": str(Path(expert_dir).resolve()),
        "expert_iterations": [s.iteration for s in snaps],
        "expert_policy_index": len(snaps) - 1,
        "env": to_dict(env_cfg),
        "label_timing": "reward[i] = r(s_i, a_i); value[i] = V(s_{i+1}) (0 if s_{i+1} is a failure)",
    }
    with Dataset.open_or_create(out, spec, extra=extra) as ds:
        stored = ds.extra.get("generate")
        if stored is not None and stored.get("robot") != cfg.robot:
            raise DatasetError(f"{out}: dataset was generated for robot '{stored.get('robot')}', not '{cfg.robot}'")
        stored_env = ds.extra.get("env")
        if stored_env is not None and stored_env != extra["env"]:
            diff = sorted(k for k in set(stored_env) | set(extra["env"]) if stored_env.get(k) != extra["env"].get(k))
            raise DatasetError(f"{out}: this dataset was generated with other env settings ({', '.join(diff)}); "
                               "continue it with the same expert and --env-set, or write a new one")
        return _generate(cfg, snaps, env, spec, ds, out, show_progress, stop_after_appends)


def _generate(cfg, snaps, env, spec, ds, out, show_progress, stop_after_appends) -> GenerateResult:
    start_transitions = ds.n_transitions
    if start_transitions >= cfg.transitions:
        console.print(f"{out} already holds {ds.n_transitions:,} transitions (target {cfg.transitions:,})")
        return GenerateResult(out, ds.n_transitions, ds.n_episodes, 0, 0.0)
    if start_transitions:
        console.print(f"continuing {out}: {ds.n_transitions:,} of {cfg.transitions:,} transitions ({ds.n_episodes} episodes)")

    bank = make_policy_bank(snaps)
    params = bank_params(bank)
    chunk = make_chunk_fn(env, bank, cfg.perturb, cfg.chunk_steps)
    # A resumed run draws a fresh random stream, so it does not repeat the episodes it has.
    key = jax.random.fold_in(jax.random.key(cfg.seed), ds.n_episodes)
    gs = init_gen_state(env, bank, cfg.perturb, key, cfg.num_envs)
    fields = tuple(f for f in STEP_FIELDS if f in spec.fields())
    asm = EpisodeAssembler(cfg.num_envs, fields)

    t0 = time.perf_counter()
    appends = 0
    with progress_bar(f"generate-data {cfg.robot}", cfg.transitions, show_progress) as update:
        update(advance=ds.n_transitions)
        while ds.n_transitions < cfg.transitions:
            gs, recs = chunk(gs, params)
            asm.add(jax.device_get(recs))
            remaining = cfg.transitions - ds.n_transitions
            if asm.ready_transitions >= min(cfg.flush_transitions, remaining):
                before = ds.n_transitions
                steps, lengths, policy, terminated = asm.take()
                with deferred_interrupt():  # a Ctrl-C lets the generated episodes be committed first
                    ds.append_episodes(steps, lengths, policy, terminated)
                appends += 1
                rate = (ds.n_transitions - start_transitions) / max(time.perf_counter() - t0, 1e-9)
                update(advance=ds.n_transitions - before, **{"episodes": str(ds.n_episodes), "steps/s": f"{rate:9,.0f}"})
                if stop_after_appends is not None and appends >= stop_after_appends:
                    break
    seconds = time.perf_counter() - t0
    return GenerateResult(out, ds.n_transitions, ds.n_episodes, ds.n_transitions - start_transitions, seconds)
