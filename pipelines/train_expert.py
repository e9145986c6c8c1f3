"""Stage 1: train a PPO expert on privileged state in MJX, keeping policy snapshots.

Run directory layout (OUT):
  config.json        the ExpertConfig (robot, preset, seed, env, ppo)
  checkpoints/       resumable training state (orbax; newest two kept)
  snapshots/<it>/    policy snapshots with value function (orbax); the last is the expert
  history.jsonl      one line of training metrics per iteration
  metrics.json       the expert's and a random policy's mean episode return
  training_curve.png return against environment steps
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.config import to_dict, with_overrides
from simdist.envs import MjxEnv
from simdist.errors import CheckpointError
from simdist.rl.config import ExpertConfig
from simdist.rl.policy import SNAPSHOT_KIND, load_expert, read_run_config, snapshot_state
from simdist.rl.ppo import PPO, TrainState, make_evaluator, random_action, snapshot_action
from simdist.robots import get_robot
from simdist.runlog import save_figure
from simdist.training import FailAt, LoopResult, RunSpec, Stage, prepare_run_dir, run

TRAIN_STATE_KIND = "ppo_train_state"


@dataclass
class TrainResult:
    out: Path
    started_at: int  # iteration this invocation started from (0 for a fresh run)
    iteration: int  # iteration reached
    metrics: dict[str, Any] | None  # None when stopped early


def make_config(robot: str, preset: str, seed: int, overrides: dict[str, Any] | None = None) -> ExpertConfig:
    cfg = get_robot(robot).expert_config(preset, seed)
    return with_overrides(cfg, overrides or {})


def _train_state_payload(ts: TrainState) -> dict[str, Any]:
    return {
        "params": ts.params,
        "opt_state": ts.opt_state,
        "obs_stats": ts.obs_stats,
        "lr": ts.lr,
        "key": jax.random.key_data(ts.key),
        "iteration": ts.iteration,
    }


def _from_payload(p: dict[str, Any]) -> TrainState:
    return TrainState(
        params=p["params"],
        opt_state=p["opt_state"],
        obs_stats=p["obs_stats"],
        lr=jnp.asarray(p["lr"]),
        key=jax.random.wrap_key_data(jnp.asarray(p["key"])),
        iteration=jnp.asarray(p["iteration"]),
    )


def _init_from(ts: TrainState, ppo: PPO, cfg: ExpertConfig) -> TrainState:
    """Start from another run's final expert: its actor, critic, action std and observation
    normaliser; fresh optimiser state. The architectures and observations must match."""
    src = Path(cfg.init_from)
    snap = load_expert(src, cfg.robot)  # clear errors for a missing, unfinished or wrong-robot run
    want = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(ts.params))
    got = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(snap.params))
    if want != got or snap.obs_stats.mean.shape != ts.obs_stats.mean.shape:
        raise CheckpointError(
            f"--init-from {src}: its networks or observations do not match this config's "
            "(same robot, actor_hidden and critic_hidden needed)"
        )
    params = jax.tree.map(jnp.asarray, snap.params)
    return ts.replace(params=params, opt_state=ppo.tx.init(params), obs_stats=snap.obs_stats)


# Compiled programs of the configs trained in this process: a resumed run, or the same config
# trained again, reuses them instead of tracing and compiling MJX and PPO anew. The iteration
# count, checkpoint cadence and snapshot count are not part of the programs.
_COMPILED: dict[str, tuple[MjxEnv, PPO, dict]] = {}
_NOT_COMPILED = ("num_iterations", "checkpoint_every", "num_snapshots")


def _compiled(cfg: ExpertConfig) -> tuple[MjxEnv, PPO, dict]:
    """(env, PPO, evaluator cache) of a config, built once per process."""
    ppo_key = {k: v for k, v in to_dict(cfg.ppo).items() if k not in _NOT_COMPILED}
    key = json.dumps([cfg.robot, cfg.seed, to_dict(cfg.env), ppo_key], sort_keys=True, default=str)
    if key not in _COMPILED:
        if len(_COMPILED) >= 4:
            _COMPILED.pop(next(iter(_COMPILED)))
        env = MjxEnv(get_robot(cfg.robot).make_task(cfg.env))
        _COMPILED[key] = (env, PPO(env, cfg.ppo, seed=cfg.seed), {})
    env, ppo, evaluators = _COMPILED[key]
    return env, ppo, evaluators


def evaluate_expert_and_random(env: MjxEnv, ppo: PPO, ts: TrainState, num_envs: int, seed: int,
                               evaluators: dict | None = None) -> dict[str, float]:
    key = jax.random.key(seed + 10_000)
    evaluators = {} if evaluators is None else evaluators
    if num_envs not in evaluators:
        evaluators[num_envs] = (make_evaluator(env, snapshot_action(ppo.graphdef), num_envs),
                                make_evaluator(env, random_action(env), num_envs))
    run_expert, run_random = evaluators[num_envs]
    expert = np.asarray(run_expert((ts.params, ts.obs_stats), key))
    rand = np.asarray(run_random(None, key))
    return {
        "expert_return_mean": float(expert.mean()),
        "expert_return_std": float(expert.std()),
        "random_return_mean": float(rand.mean()),
        "random_return_std": float(rand.std()),
        "eval_episodes": int(num_envs),
        "episode_length": int(env.config.episode_length),
    }


def plot_history(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(r["env_steps"], r["episode_return"]) for r in rows if r.get("episodes", 0) > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if pts:
        x, y = zip(*pts)
        ax.plot(np.asarray(x) / 1e6, y, marker=".")
    ax.set_xlabel("environment steps (millions)")
    ax.set_ylabel("mean episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


class _ExpertStage(Stage):
    """PPO iterations; a history row per iteration; policy snapshots at the config's iterations."""

    def __init__(self, cfg: ExpertConfig, out: Path, env: MjxEnv, ppo: PPO, ts: TrainState, evaluators: dict):
        self.cfg, self.out, self.env, self.ppo, self.ts = cfg, out, env, ppo, ts
        self.evaluators = evaluators
        self.meta = {"config": to_dict(cfg), "robot": cfg.robot}
        self.env_state = None
        self.last_return = float("nan")
        self.t_start = self.t_step = time.perf_counter()
        self.steps_done = 0

    def state(self) -> dict[str, Any]:
        return _train_state_payload(self.ts)

    def load(self, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.ts = _from_payload(state)
        self.last_return = next((r["episode_return"] for r in reversed(history) if r.get("episodes", 0) > 0),
                                float("nan"))

    def step(self, it: int) -> dict[str, Any]:
        if self.env_state is None:  # the envs restart at every invocation, seeded by where it starts
            self.env_state = self.ppo.reset_envs(jax.random.fold_in(jax.random.key(self.cfg.seed + 1), it - 1))
            self.t_start = time.perf_counter()
        self.t_step = time.perf_counter()
        self.ts, self.env_state, m = self.ppo.train_iteration(self.ts, self.env_state)
        m["params_finite"] = jnp.where(m["params_finite"] < 1.0, jnp.nan, 1.0)  # a non-finite metric stops
        self.steps_done += self.cfg.ppo.steps_per_iteration
        return m

    def evaluate(self, it: int, metrics: list[dict[str, float]]) -> tuple[dict[str, Any], dict[str, str]]:
        m = {k: v for k, v in metrics[-1].items() if k != "params_finite"}
        if m["episodes"] > 0:
            self.last_return = m["episode_return"]
        steps = self.cfg.ppo.steps_per_iteration
        row = dict(m, iteration=it, env_steps=it * steps, wall_s=time.perf_counter() - self.t_step)
        sps = self.steps_done / max(time.perf_counter() - self.t_start, 1e-9)
        return row, {"return": f"{self.last_return:7.2f}", "steps/s": f"{sps:9,.0f}"}

    def snapshot(self, it: int) -> tuple[Any, dict[str, Any]]:
        p = self.cfg.ppo
        ret = self.last_return if np.isfinite(self.last_return) else None
        meta = dict(self.meta, kind=SNAPSHOT_KIND, iteration=it, env_steps=it * p.steps_per_iteration,
                    final=it == p.num_iterations, train_return=ret)
        return snapshot_state(self.ts.params, self.ts.obs_stats), meta

    def finish(self, result: LoopResult) -> dict[str, Any]:
        cfg, p = self.cfg, self.cfg.ppo
        metrics = evaluate_expert_and_random(self.env, self.ppo, self.ts, p.eval_envs, cfg.seed, self.evaluators)
        metrics.update(
            robot=cfg.robot,
            preset=cfg.preset,
            seed=cfg.seed,
            iterations=p.num_iterations,
            env_steps=p.total_steps,
            snapshots=sorted(p.snapshot_iterations()),
            train_seconds_this_invocation=round(result.seconds, 2),
            train_steps_per_second_this_invocation=round(result.steps_done * p.steps_per_iteration
                                                         / max(result.seconds, 1e-9), 1),
        )
        plot_history(result.history, self.out / "training_curve.png", f"{cfg.robot} expert ({cfg.preset})")
        return metrics


def train_expert(
    cfg: ExpertConfig,
    out: Path,
    *,
    show_progress: bool = True,
    stop_after: int | None = None,
    fail_at: FailAt | None = None,
) -> TrainResult:
    """Train (or resume) an expert into `out`. `stop_after` ends this invocation after that
    many iterations without finishing the run (used to test resumption); `fail_at` is the
    training loop's kill hook (tests)."""
    out = Path(out)
    env, ppo, evaluators = _compiled(cfg)
    pcfg = cfg.ppo

    ts = ppo.init(jax.random.key(cfg.seed))
    ckpt_dir = out / "checkpoints"
    if cfg.init_from is not None and not (ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
        ts = _init_from(ts, ppo, cfg)  # a bad source fails here, before the run directory exists
    prepare_run_dir(out, to_dict(cfg), "train-expert", read=lambda _: to_dict(read_run_config(out)))
    stage = _ExpertStage(cfg, out, env, ppo, ts, evaluators)
    spec = RunSpec(out, f"train-expert {cfg.robot}", TRAIN_STATE_KIND, to_dict(cfg), pcfg.num_iterations,
                   pcfg.checkpoint_every, step_key="iteration", meta={"robot": cfg.robot},
                   snapshot_steps=frozenset(pcfg.snapshot_iterations()))
    res = run(spec, stage, show_progress=show_progress, stop_after=stop_after, fail_at=fail_at)
    return TrainResult(out, res.started_at, int(stage.ts.iteration), res.metrics)
