"""All presets of the quadruped, one place for every stage: expert (Stage 1), data (Stage 2),
distill (Stage 3), finetune (Stage 4) and the deploy planner (MPPI).

`tiny` for the test suite, `default` for one long run on a 2-core CPU (MJX steps this robot at
about 4 k control steps/s at 64 envs there, so a few million steps, a rough walking gait at
best), `paper` for the reference scale on a GPU (4096 envs, 24 steps per iteration, 3x512 ELU,
~490 M steps).
"""

from __future__ import annotations

from simdist.data.generate import GenerateConfig, PerturbConfig
from simdist.models.distill_config import DistillConfig
from simdist.models.finetune_config import FINETUNE_PRESETS
from simdist.models.world_model import WorldModelConfig
from simdist.planning.mppi import PRESETS as GENERIC_MPPI
from simdist.planning.mppi import MPPIConfig
from simdist.rl.config import ExpertConfig, PPOConfig
from simdist.robots.quadruped.task import (
    SCAN_COLS,
    SCAN_ROWS,
    QuadrupedEnvConfig,
    QuadrupedTask,
)

OBS_SIZE = len(QuadrupedTask.deployable_obs_names)  # 127: 50 proprioceptive + 77 height scan


def _tiny(seed: int) -> ExpertConfig:
    # The test suite: a few iterations, only to show the pipeline runs on this robot.
    return ExpertConfig(
        robot="quadruped",
        preset="tiny",
        seed=seed,
        env=QuadrupedEnvConfig(episode_length=100),
        ppo=PPOConfig(
            num_envs=32,
            unroll_length=16,
            num_iterations=4,
            num_epochs=2,
            num_minibatches=2,
            actor_hidden=(64, 64),
            critic_hidden=(64, 64),
            num_snapshots=2,
            checkpoint_every=2,
            eval_envs=8,
        ),
    )


def _default(seed: int) -> ExpertConfig:
    # One long run on a 2-core CPU: 256 envs x 24 steps x 1000 iterations = 6.1 M steps, about
    # 24 min. A narrower command range than the reference (forward 0..1 m/s, little sideways
    # and yaw) and a smaller initial action std (exp(-0.5)): with the full ranges and std 1 the
    # same budget learned to stand, not to walk (docs/quadruped.md).
    return ExpertConfig(
        robot="quadruped",
        preset="default",
        seed=seed,
        env=QuadrupedEnvConfig(vx_range=(0.0, 1.0), vy_range=(-0.2, 0.2), yaw_rate_range=(-0.5, 0.5),
                               zero_command_probability=0.05),
        ppo=PPOConfig(
            init_log_std=-0.5,
            num_envs=256,
            unroll_length=24,
            num_iterations=1000,
            num_epochs=5,
            num_minibatches=4,
            actor_hidden=(256, 256, 128),
            critic_hidden=(256, 256, 128),
            num_snapshots=12,
            checkpoint_every=20,
            eval_envs=64,
        ),
    )


def _paper(seed: int) -> ExpertConfig:
    # The reference: 4096 envs, 24 steps per iteration, 5000 iterations (~490 M steps).
    return ExpertConfig(
        robot="quadruped",
        preset="paper",
        seed=seed,
        env=QuadrupedEnvConfig(),
        ppo=PPOConfig(
            num_envs=4096,
            unroll_length=24,
            num_iterations=5000,
            num_epochs=5,
            num_minibatches=4,
            actor_hidden=(512, 512, 512),
            critic_hidden=(512, 512, 512),
            num_snapshots=12,
            checkpoint_every=100,
            eval_envs=256,
        ),
    )


# Stage 2: the reference's perturbation schedule (noise std U(0.05, 2.5) in raw action units,
# noisy 1-49 steps, clean 25-499 steps, 2.5 % never noised) for 1000-step episodes.
QUADRUPED_PERTURB = PerturbConfig(
    noise_std_range=(0.05, 2.5),
    noisy_steps=(1, 49),
    clean_steps=(25, 499),
    never_noised_fraction=0.025,
    expert_probability=0.5,
)


def _data_tiny(seed: int) -> GenerateConfig:
    return GenerateConfig(robot="quadruped", preset="tiny", seed=seed, num_envs=16, transitions=4_000,
                          chunk_steps=50, flush_transitions=2_000, perturb=QUADRUPED_PERTURB)


def _data_default(seed: int) -> GenerateConfig:
    return GenerateConfig(robot="quadruped", preset="default", seed=seed, num_envs=256, transitions=2_000_000,
                          chunk_steps=100, flush_transitions=200_000, perturb=QUADRUPED_PERTURB)


def _data_paper(seed: int) -> GenerateConfig:
    return GenerateConfig(robot="quadruped", preset="paper", seed=seed, num_envs=4096, transitions=102_400_000,
                          chunk_steps=100, flush_transitions=4_000_000, perturb=QUADRUPED_PERTURB)


# Stage 3: observation 127 (height scan 11x7 LAST, through the encoder's CNN branch),
# action 12, command 3.
# Every preset trains the policy prior on the relabelled target (the expert's own action at
# every Stage 2 step) and lets it read the history context: on the quadruped this planner walks
# 93 % of the expert's distance in sim (85 % with the reference's prior) and falls far less on
# the slippery slope (docs/quadruped.md, "A relabelled, context-reading policy prior").
def _wm(**kw) -> WorldModelConfig:
    return WorldModelConfig(obs_size=OBS_SIZE, action_size=12, command_size=3,
                            height_scan_shape=(SCAN_ROWS, SCAN_COLS), bc_target="relabelled",
                            prior_context=True, **kw)  # fmt: skip


def _distill_tiny(seed: int) -> DistillConfig:
    model = _wm(latent_size=32, encoder_hidden=(64, 64), history=4, horizon=8, d_model=32, n_heads=2,
                n_layers=1, mlp_dynamics_hidden=(64, 64), head_hidden=(64, 64))
    return DistillConfig(robot="quadruped", preset="tiny", seed=seed, model=model, batch_size=32, steps=100,
                         warmup_steps=20, eval_every=50, eval_windows=256, final_eval_windows=512,
                         checkpoint_every=50)


def _distill_default(seed: int) -> DistillConfig:
    model = _wm(latent_size=64, encoder_hidden=(128, 128), history=8, horizon=16, d_model=64, n_heads=4,
                n_layers=2, head_hidden=(128, 128))
    # 4,000 steps: about 10-15 min on a 2-core CPU (the shipped model; docs/quadruped.md).
    return DistillConfig(robot="quadruped", preset="default", seed=seed, model=model, batch_size=256, steps=4_000,
                         lr_peak=1e-3, lr_final=1e-4, warmup_steps=300, eval_every=500, eval_windows=2048,
                         final_eval_windows=16_384, checkpoint_every=1000)


def _distill_paper(seed: int) -> DistillConfig:
    # The reference: 25-step history and horizon, 8 heads, batch 512, lr 2e-4 -> 1e-4, 370 k steps.
    model = _wm(latent_size=64, encoder_hidden=(128, 128), history=25, horizon=25, d_model=128, n_heads=8,
                n_layers=2, head_hidden=(256, 256), obs_noise_std=0.05)
    return DistillConfig(robot="quadruped", preset="paper", seed=seed, model=model, batch_size=512, steps=370_000,
                         lr_peak=2e-4, lr_final=1e-4, warmup_steps=5000, eval_every=5000, eval_windows=8192,
                         final_eval_windows=65_536, checkpoint_every=5000)


# Stage 4 and deploy: the library's generic recipes (finetune: batch 32, lr 1e-3 on a CPU, the
# reference's Adam 2e-4 with warmup and ReDRAW's 100x residual rate for `paper`; MPPI: the
# budgets that fit the 50 Hz control period on a 2-core CPU, and the reference's for `paper`).
# Other planners are given with `deploy --mppi-set` (docs/quadruped.md).
MPPI_PRESETS: dict[str, MPPIConfig] = dict(GENERIC_MPPI)

EXPERT = {"tiny": _tiny, "default": _default, "paper": _paper}
DATA = {"tiny": _data_tiny, "default": _data_default, "paper": _data_paper}
DISTILL = {"tiny": _distill_tiny, "default": _distill_default, "paper": _distill_paper}
FINETUNE = dict(FINETUNE_PRESETS)
