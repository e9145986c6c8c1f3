"""The cartpole: a cart on a rail with a hinged pole, swing-up and balance at 50 Hz."""

from __future__ import annotations

from simdist.rl.config import ExpertConfig, PPOConfig
from simdist.robots import Robot
from simdist.robots.cartpole.task import CartpoleEnvConfig, CartpoleTask


def _tiny(seed: int) -> ExpertConfig:
    # Small enough for the test suite: ~0.2 M steps, about a minute on 2 cores.
    return ExpertConfig(
        robot="cartpole",
        preset="tiny",
        seed=seed,
        env=CartpoleEnvConfig(episode_length=200),
        ppo=PPOConfig(
            num_envs=128,
            unroll_length=32,
            num_iterations=40,
            num_epochs=4,
            num_minibatches=4,
            actor_hidden=(64, 64),
            critic_hidden=(64, 64),
            reward_scale=0.1,
            num_snapshots=3,
            checkpoint_every=10,
            eval_envs=32,
        ),
    )


def _default(seed: int) -> ExpertConfig:
    # A 2-core CPU: a swing-up-and-balance expert in a few minutes.
    return ExpertConfig(
        robot="cartpole",
        preset="default",
        seed=seed,
        env=CartpoleEnvConfig(),
        ppo=PPOConfig(
            num_envs=512,
            unroll_length=32,
            num_iterations=250,
            reward_scale=0.1,
            num_snapshots=8,
            checkpoint_every=10,
        ),
    )


def _paper(seed: int) -> ExpertConfig:
    # Reference scale (4096 envs, 24 steps per iteration, 3x512 ELU) for a GPU.
    return ExpertConfig(
        robot="cartpole",
        preset="paper",
        seed=seed,
        env=CartpoleEnvConfig(),
        ppo=PPOConfig(
            num_envs=4096,
            unroll_length=24,
            num_iterations=500,
            num_epochs=5,
            num_minibatches=4,
            actor_hidden=(512, 512, 512),
            critic_hidden=(512, 512, 512),
            reward_scale=0.1,
            num_snapshots=12,
            checkpoint_every=50,
            eval_envs=256,
        ),
    )


ROBOT = Robot(
    name="cartpole",
    description="cart on a rail with a hinged pole; swing-up and balance, 1 motor, 50 Hz",
    task_cls=CartpoleTask,
    env_config_cls=CartpoleEnvConfig,
    expert_presets={"tiny": _tiny, "default": _default, "paper": _paper},
)
