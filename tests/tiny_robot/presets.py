"""The tiny slider's presets: one `tiny` preset per stage, small enough that the whole pipeline
runs in about a minute on a 2-core CPU."""

from __future__ import annotations

from simdist.data.generate import GenerateConfig, PerturbConfig
from simdist.models.distill_config import DistillConfig
from simdist.models.finetune_config import FinetuneConfig
from simdist.models.world_model import WorldModelConfig
from simdist.planning.mppi import MPPIConfig
from simdist.rl.config import ExpertConfig, PPOConfig

from tests.tiny_robot.task import SliderEnvConfig

NAME = "tiny_slider"


def expert(seed: int) -> ExpertConfig:
    return ExpertConfig(robot=NAME, preset="tiny", seed=seed, env=SliderEnvConfig(),
                        ppo=PPOConfig(num_envs=64, unroll_length=16, num_iterations=30, num_epochs=2,
                                      num_minibatches=2, actor_hidden=(32, 32), critic_hidden=(32, 32),
                                      num_snapshots=2, checkpoint_every=15, eval_envs=16))


def data(seed: int) -> GenerateConfig:
    perturb = PerturbConfig(noise_std_range=(0.05, 1.0), noisy_steps=(1, 10), clean_steps=(10, 40),
                            never_noised_fraction=0.05, expert_probability=0.5)
    return GenerateConfig(robot=NAME, preset="tiny", seed=seed, num_envs=32, transitions=6_400, chunk_steps=50,
                          flush_transitions=3_200, perturb=perturb)


def distill(seed: int) -> DistillConfig:
    model = WorldModelConfig(obs_size=2, action_size=1, command_size=0, latent_size=16, encoder_hidden=(32, 32),
                             history=4, horizon=8, dynamics="mlp", d_model=16, n_heads=2, n_layers=1,
                             mlp_dynamics_hidden=(32, 32), head_hidden=(32, 32))
    return DistillConfig(robot=NAME, preset="tiny", seed=seed, model=model, batch_size=32, steps=200,
                         warmup_steps=20, eval_every=100, eval_windows=256, final_eval_windows=256,
                         checkpoint_every=100)


def finetune(seed: int) -> FinetuneConfig:
    return FinetuneConfig(preset="tiny", seed=seed, steps=150, batch_size=32, lr_peak=1e-3, lr_final=1e-4,
                          warmup_steps=10, eval_every=75, eval_windows=256, checkpoint_every=75)


MPPI = {"tiny": MPPIConfig(horizon=8, samples=32, iterations=2, elites=8, prior_samples=4)}
