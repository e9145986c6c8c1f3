"""Configs of Stage 1: PPO and the expert run that composes it with a robot env."""

from __future__ import annotations

import dataclasses
from typing import Any

from simdist.config import from_dict, to_dict
from simdist.envs.task import EnvConfig
from simdist.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    num_envs: int = 256
    unroll_length: int = 32  # steps per env per iteration
    num_iterations: int = 200
    num_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 1e-3
    desired_kl: float | None = 0.01  # adaptive learning rate (None: fixed)
    clip_eps: float = 0.2
    value_coef: float = 1.0
    entropy_coef: float = 0.01
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_grad_norm: float = 1.0
    reward_scale: float = 1.0
    actor_hidden: tuple[int, ...] = (128, 128)
    critic_hidden: tuple[int, ...] = (128, 128)
    activation: str = "elu"
    init_log_std: float = 0.0
    normalize_obs: bool = True
    num_snapshots: int = 6  # policy snapshots kept along training, the final one included
    checkpoint_every: int = 10  # iterations between resumable checkpoints
    eval_envs: int = 64

    def __post_init__(self):
        for name in ("num_envs", "unroll_length", "num_iterations", "num_epochs", "num_minibatches"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"PPOConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_iteration % self.num_minibatches:
            raise ConfigError(
                f"PPOConfig: the batch of num_envs x unroll_length = {self.num_envs} x {self.unroll_length} = "
                f"{self.steps_per_iteration} steps does not divide into num_minibatches = {self.num_minibatches}"
            )

    @property
    def steps_per_iteration(self) -> int:
        return self.num_envs * self.unroll_length

    @property
    def total_steps(self) -> int:
        return self.steps_per_iteration * self.num_iterations

    def snapshot_iterations(self) -> tuple[int, ...]:
        """Iterations after which a policy snapshot is kept: 0 (untrained) ... final."""
        n = max(2, self.num_snapshots)
        its = {round(i * self.num_iterations / (n - 1)) for i in range(n)}
        return tuple(sorted(its))


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    robot: str
    preset: str
    seed: int
    env: EnvConfig
    ppo: PPOConfig
    # A finished expert run whose final policy, value function and observation normaliser
    # start this run (a curriculum: e.g. flat ground first, then slopes). None: from scratch.
    init_from: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ExpertConfig":
        from simdist.robot import get_robot

        robot = get_robot(data["robot"])
        return ExpertConfig(
            robot=data["robot"],
            preset=data["preset"],
            seed=int(data["seed"]),
            env=from_dict(robot.env_config_cls, data["env"]),
            ppo=from_dict(PPOConfig, data["ppo"]),
            init_from=data.get("init_from"),
        )
