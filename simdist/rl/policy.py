"""Policy snapshots: the expert and the sub-optimal policies kept along PPO training.

A run directory of `simdist train-expert` holds `snapshots/<iteration>/` checkpoints. Each
has the actor-critic parameters (the critic is the expert's value function), the observation
normaliser, and metadata with the full `ExpertConfig` and the digest of the arrays, which every
load verifies. The snapshot at the last iteration is
the expert; the earlier ones are the sub-optimal policies that make Stage 2 diverse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from simdist.checkpointing import Checkpoints
from simdist.config import read_json
from simdist.errors import CheckpointError
from simdist.rl.config import ExpertConfig
from simdist.rl.normalizer import RunningStats
from simdist.rl.ppo import make_actor_critic, make_policy_fn, make_value_fn

SNAPSHOT_KIND = "policy_snapshot"


@dataclasses.dataclass
class PolicySnapshot:
    iteration: int
    is_final: bool
    config: ExpertConfig
    graphdef: Any
    params: Any
    obs_stats: RunningStats
    meta: dict[str, Any]

    def policy_fn(self, deterministic: bool = True):
        """Pure `(privileged_obs, key) -> action`, parameters closed over."""
        f = make_policy_fn(self.graphdef, deterministic)
        return lambda obs, key=None: f(self.params, self.obs_stats, obs, key)

    def value_fn(self):
        """Pure `privileged_obs -> V` in reward units (the training `reward_scale` undone)."""
        f = make_value_fn(self.graphdef)
        scale = self.config.ppo.reward_scale
        return lambda obs: f(self.params, self.obs_stats, obs) / scale


def snapshot_state(params, obs_stats: RunningStats) -> dict[str, Any]:
    return {"params": nnx.to_pure_dict(params), "obs_stats": obs_stats}


def read_run_config(run_dir: Path, robot: str | None = None) -> ExpertConfig:
    """The ExpertConfig of a train-expert run; checks it is for `robot` when given."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"expert run directory {run_dir} does not exist")
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir} is not a train-expert run (no config.json)")
    data = read_json(cfg_path)
    if robot is not None and data.get("robot") != robot:
        raise CheckpointError(
            f"{run_dir} holds an expert trained for robot '{data.get('robot')}', not '{robot}'"
        )
    return ExpertConfig.from_dict(data)


def load_snapshots(run_dir: Path, robot: str | None = None) -> list[PolicySnapshot]:
    """All policy snapshots of a run, oldest first; the last one is the expert."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, robot)
    snaps_dir = run_dir / "snapshots"
    if not snaps_dir.is_dir():
        raise CheckpointError(f"{run_dir} has no policy snapshots yet")
    with Checkpoints(snaps_dir, create=False) as ckpts:  # closed on every path, errors included
        steps = ckpts.steps()
        if not steps:
            raise CheckpointError(f"{run_dir} has no policy snapshots yet")
        robot_cfg = _robot_for(cfg)
        task = robot_cfg.make_task(cfg.env)
        model = make_actor_critic(len(task.privileged_obs_names), task.action_size, cfg.ppo, cfg.seed)
        graphdef, params_template = nnx.split(model)
        template = {
            "params": nnx.to_pure_dict(params_template),
            "obs_stats": RunningStats.create(len(task.privileged_obs_names)),
        }
        out = []
        for step in steps:
            meta = ckpts.meta(step)
            if meta.get("kind") != SNAPSHOT_KIND:
                raise CheckpointError(f"{snaps_dir}/{step} is not a policy snapshot")
            if meta.get("config", {}).get("robot") != cfg.robot:
                raise CheckpointError(f"{snaps_dir}/{step} was trained for robot '{meta.get('config', {}).get('robot')}'")
            state = ckpts.restore(step, template)
            _, params = nnx.split(model)
            nnx.replace_by_pure_dict(params, state["params"])
            params = jax.tree.map(lambda x: x, params)  # a fresh State, not aliased to `model`
            out.append(
                PolicySnapshot(
                    iteration=step,
                    is_final=bool(meta.get("final", False)),
                    config=cfg,
                    graphdef=graphdef,
                    params=params,
                    obs_stats=state["obs_stats"],
                    meta=meta,
                )
            )
    return out


def load_expert(run_dir: Path, robot: str | None = None) -> PolicySnapshot:
    snaps = load_snapshots(run_dir, robot)
    final = [s for s in snaps if s.is_final]
    if not final:
        raise CheckpointError(f"{run_dir} has no final expert yet; finish training with `simdist train-expert`")
    return final[-1]


def _robot_for(cfg: ExpertConfig):
    from simdist.robots import get_robot

    return get_robot(cfg.robot)
