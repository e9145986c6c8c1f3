"""simdist.models: the Stage 3 latent world model, its loss and trainer."""

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
    evaluate_batch,
    r2_score,
    world_model_loss,
)

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
    "make_optimizer",
    "make_schedule",
    "r2_score",
    "world_model_loss",
]
