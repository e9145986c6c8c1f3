"""Config of Stage 3 (distill): the world model and how it is trained."""

from __future__ import annotations

import dataclasses

from simdist.errors import ConfigError
from simdist.models.world_model import WorldModelConfig


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    robot: str
    preset: str
    seed: int
    model: WorldModelConfig
    batch_size: int = 256
    steps: int = 10_000
    lr_peak: float = 1e-3  # linear warmup to lr_peak, then cosine to lr_final
    lr_final: float = 1e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    heldout_fraction: float = 0.1  # share of episodes held out (whole episodes)
    eval_every: int = 500
    eval_windows: int = 2048  # held-out windows scored at every eval
    final_eval_windows: int = 16_384  # held-out windows of the final report
    r2_steps: int = 5  # the report's reward/value R² covers the first r2_steps horizon steps
    checkpoint_every: int = 1_000
    max_resident_transitions: int = 4_000_000  # above this, windows stream from disk

    def __post_init__(self):
        if self.batch_size < 1 or self.steps < 1 or self.eval_every < 1 or self.checkpoint_every < 1:
            raise ConfigError("batch_size, steps, eval_every and checkpoint_every must be >= 1")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError("heldout_fraction must lie in (0, 1)")
        if not 1 <= self.r2_steps <= self.model.horizon:
            raise ConfigError(f"r2_steps must lie in [1, horizon={self.model.horizon}]")
