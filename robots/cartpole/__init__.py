"""The cartpole: a cart on a rail with a hinged pole, swing-up and balance at 50 Hz."""

from __future__ import annotations

from simdist.data.generate import GenerateConfig, PerturbConfig
from simdist.models.distill_config import DistillConfig
from simdist.models.world_model import WorldModelConfig
from simdist.rl.config import ExpertConfig, PPOConfig
from simdist.robots import Robot
from simdist.robots.cartpole.gaps import GAPS
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


# Stage 2. Actions live in [-1, 1], so the reference's noise stds of up to 2.5 would saturate
# every burst into bang-bang control; bursts and clean phases are also scaled to 300-step
# episodes (the reference's 25-499 clean steps are for 1000-step quadruped episodes).
CARTPOLE_PERTURB = PerturbConfig(
    noise_std_range=(0.05, 1.0),
    noisy_steps=(1, 25),
    clean_steps=(20, 150),
    never_noised_fraction=0.025,
    expert_probability=0.5,
)


def _data_tiny(seed: int) -> GenerateConfig:
    return GenerateConfig(robot="cartpole", preset="tiny", seed=seed, num_envs=64, transitions=40_000,
                          chunk_steps=100, flush_transitions=12_000, perturb=CARTPOLE_PERTURB)


def _data_default(seed: int) -> GenerateConfig:
    return GenerateConfig(robot="cartpole", preset="default", seed=seed, num_envs=512, transitions=1_000_000,
                          chunk_steps=100, flush_transitions=150_000, perturb=CARTPOLE_PERTURB)


def _data_paper(seed: int) -> GenerateConfig:
    return GenerateConfig(robot="cartpole", preset="paper", seed=seed, num_envs=4096, transitions=20_000_000,
                          chunk_steps=100, flush_transitions=2_000_000, perturb=CARTPOLE_PERTURB)


# Stage 3. Observation 5, action 1, no command.
def _wm(**kw) -> WorldModelConfig:
    return WorldModelConfig(obs_size=5, action_size=1, command_size=0, **kw)


def _distill_tiny(seed: int) -> DistillConfig:
    model = _wm(latent_size=32, encoder_hidden=(64, 64), history=4, horizon=8, d_model=32, n_heads=2,
                n_layers=1, mlp_dynamics_hidden=(64, 64), head_hidden=(64, 64))
    return DistillConfig(robot="cartpole", preset="tiny", seed=seed, model=model, batch_size=64, steps=400,
                         warmup_steps=50, eval_every=100, eval_windows=512, final_eval_windows=1024,
                         checkpoint_every=100)


def _distill_default(seed: int) -> DistillConfig:
    model = _wm(latent_size=64, encoder_hidden=(128, 128), history=8, horizon=16, d_model=64, n_heads=4,
                n_layers=2, head_hidden=(128, 128))
    return DistillConfig(robot="cartpole", preset="default", seed=seed, model=model, batch_size=256, steps=3000,
                         lr_peak=1e-3, lr_final=1e-4, warmup_steps=300, eval_every=500, eval_windows=2048,
                         final_eval_windows=16_384, checkpoint_every=1000)


def _distill_paper(seed: int) -> DistillConfig:
    # The reference's scale: 25-step history and horizon, 8 heads, batch 512, lr 2e-4 -> 1e-4.
    model = _wm(latent_size=64, encoder_hidden=(128, 128), history=25, horizon=25, d_model=128, n_heads=8,
                n_layers=2, head_hidden=(256, 256), obs_noise_std=0.05)
    return DistillConfig(robot="cartpole", preset="paper", seed=seed, model=model, batch_size=512, steps=370_000,
                         lr_peak=2e-4, lr_final=1e-4, warmup_steps=5000, eval_every=5000, eval_windows=8192,
                         final_eval_windows=65_536, checkpoint_every=5000)


ROBOT = Robot(
    name="cartpole",
    description="cart on a rail with a hinged pole; swing-up and balance, 1 motor, 50 Hz",
    task_cls=CartpoleTask,
    env_config_cls=CartpoleEnvConfig,
    expert_presets={"tiny": _tiny, "default": _default, "paper": _paper},
    gaps=GAPS,
    data_presets={"tiny": _data_tiny, "default": _data_default, "paper": _data_paper},
    distill_presets={"tiny": _distill_tiny, "default": _distill_default, "paper": _distill_paper},
)
