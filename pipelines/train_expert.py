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

from simdist.checkpointing import Checkpoints
from simdist.config import to_dict, with_overrides, write_json
from simdist.envs import MjxEnv
from simdist.errors import CheckpointError, TrainingDivergedError
from simdist.progress import console, progress_bar
from simdist.rl.config import ExpertConfig
from simdist.rl.policy import SNAPSHOT_KIND, load_expert, read_run_config, snapshot_state
from simdist.rl.ppo import PPO, TrainState, make_evaluator, random_action, snapshot_action
from simdist.robots import get_robot
from simdist.runlog import save_figure, truncate_history

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


def _check_or_write_config(out: Path, cfg: ExpertConfig) -> None:
    path = out / "config.json"
    if path.exists():
        stored = read_run_config(out)
        if stored.robot != cfg.robot:
            raise CheckpointError(
                f"{out} holds a run for robot '{stored.robot}', not '{cfg.robot}'; choose another --out"
            )
        if to_dict(stored) != to_dict(cfg):
            raise CheckpointError(
                f"{out} holds a run with another config (preset '{stored.preset}', seed {stored.seed}); "
                "resume it with the same options or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, to_dict(cfg))


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


def evaluate_expert_and_random(env: MjxEnv, ppo: PPO, ts: TrainState, num_envs: int, seed: int) -> dict[str, float]:
    key = jax.random.key(seed + 10_000)
    expert = np.asarray(make_evaluator(env, snapshot_action(ppo.graphdef), num_envs)((ts.params, ts.obs_stats), key))
    rand = np.asarray(make_evaluator(env, random_action(env), num_envs)(None, key))
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


def train_expert(
    cfg: ExpertConfig,
    out: Path,
    *,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train (or resume) an expert into `out`. `stop_after` ends this invocation after that
    many iterations without finishing the run (used to test resumption)."""
    out = Path(out)
    robot = get_robot(cfg.robot)
    env = MjxEnv(robot.make_task(cfg.env))
    ppo = PPO(env, cfg.ppo, seed=cfg.seed)
    pcfg = cfg.ppo
    meta_base = {"config": to_dict(cfg), "robot": cfg.robot}

    ts = ppo.init(jax.random.key(cfg.seed))
    ckpt_dir = out / "checkpoints"
    if cfg.init_from is not None and not (ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())):
        ts = _init_from(ts, ppo, cfg)  # a bad source fails here, before the run directory exists
    _check_or_write_config(out, cfg)
    ckpts = Checkpoints(out / "checkpoints", max_to_keep=2)
    snaps = Checkpoints(out / "snapshots")
    start = ckpts.latest_step() or 0
    if start:
        meta = ckpts.meta(start)
        if meta.get("kind") != TRAIN_STATE_KIND or meta.get("config") != to_dict(cfg):
            raise CheckpointError(f"{out}/checkpoints/{start} does not belong to this run's config")
        ts = _from_payload(ckpts.restore(start, _train_state_payload(ts)))
        if start >= pcfg.num_iterations:
            console.print(f"{out} is already fully trained ({start} iterations); evaluating it again")
        else:
            console.print(f"resuming {cfg.robot} expert from iteration {start} of {pcfg.num_iterations}")
    history_path = out / "history.jsonl"
    history = truncate_history(history_path, start, key="iteration")

    snapshot_its = set(pcfg.snapshot_iterations())

    def save_snapshot(it: int, ret: float | None) -> None:
        meta = dict(meta_base, kind=SNAPSHOT_KIND, iteration=it, env_steps=it * pcfg.steps_per_iteration,
                    final=it == pcfg.num_iterations, train_return=ret)
        snaps.save(it, snapshot_state(ts.params, ts.obs_stats), meta)

    if 0 in snapshot_its and 0 not in snaps.steps():
        save_snapshot(0, None)

    env_state = ppo.reset_envs(jax.random.fold_in(jax.random.key(cfg.seed + 1), start))
    end = pcfg.num_iterations if stop_after is None else min(pcfg.num_iterations, start + stop_after)
    last_return = history[-1]["episode_return"] if history and history[-1].get("episodes", 0) else float("nan")
    t_start = time.perf_counter()
    steps_done = 0
    with progress_bar(f"train-expert {cfg.robot}", pcfg.num_iterations, show_progress) as update:
        update(advance=start)
        for it in range(start + 1, end + 1):
            t0 = time.perf_counter()
            new_ts, env_state, m = ppo.train_iteration(ts, env_state)
            m = {k: float(v) for k, v in jax.device_get(m).items()}
            if not all(np.isfinite(v) for v in m.values()) or m.pop("params_finite") < 1.0:
                raise TrainingDivergedError(
                    f"training diverged (non-finite loss) at iteration {it}; the last good checkpoint "
                    f"(iteration {ckpts.latest_step() or 0}) is kept in {out}/checkpoints"
                )
            ts = new_ts
            steps_done += pcfg.steps_per_iteration
            if m["episodes"] > 0:
                last_return = m["episode_return"]
            row = dict(m, iteration=it, env_steps=it * pcfg.steps_per_iteration, wall_s=time.perf_counter() - t0)
            history.append(row)
            with history_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if it in snapshot_its:
                save_snapshot(it, last_return if np.isfinite(last_return) else None)
            if it % pcfg.checkpoint_every == 0 or it == end:
                ckpts.save(it, _train_state_payload(ts), dict(meta_base, kind=TRAIN_STATE_KIND, iteration=it))
            sps = steps_done / max(time.perf_counter() - t_start, 1e-9)
            update(advance=1, **{"return": f"{last_return:7.2f}", "steps/s": f"{sps:9,.0f}"})
    train_seconds = time.perf_counter() - t_start
    ckpts.close()
    snaps.close()
    it_reached = int(ts.iteration)
    if it_reached < pcfg.num_iterations:
        return TrainResult(out, start, it_reached, None)

    metrics = evaluate_expert_and_random(env, ppo, ts, pcfg.eval_envs, cfg.seed)
    metrics.update(
        robot=cfg.robot,
        preset=cfg.preset,
        seed=cfg.seed,
        iterations=pcfg.num_iterations,
        env_steps=pcfg.total_steps,
        snapshots=sorted(snapshot_its),
        train_seconds_this_invocation=round(train_seconds, 2),
        train_steps_per_second_this_invocation=round(steps_done / max(train_seconds, 1e-9), 1),
    )
    write_json(out / "metrics.json", metrics)
    plot_history(history, out / "training_curve.png", f"{cfg.robot} expert ({cfg.preset})")
    return TrainResult(out, start, it_reached, metrics)
