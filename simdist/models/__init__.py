"""simdist.models: the Stage 3 latent world model, its loss, trainer and held-out evaluation."""

from simdist.models.evaluate import heldout_report, hold_still_sq, latent_report, r2
from simdist.models.train import WorldModelTrainer, make_optimizer, make_schedule
from simdist.models.world_model import (
    ALL_PARAMS,
    DYNAMICS,
    RESIDUAL,
    STAT_NAMES,
    Stats,
    WorldModel,
    WorldModelConfig,
    count_params,
)
from simdist.models.loss import evaluate_batch, r2_score, world_model_loss

__all__ = [
    "ALL_PARAMS",
    "DYNAMICS",
    "RESIDUAL",
    "STAT_NAMES",
    "Stats",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelTrainer",
    "count_params",
    "evaluate_batch",
    "heldout_report",
    "hold_still_sq",
    "latent_report",
    "make_optimizer",
    "make_schedule",
    "r2",
    "r2_score",
    "world_model_loss",
]
