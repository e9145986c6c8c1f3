"""Config of Stage 4 (finetune): adapt a distilled world model to real-robot data.

Two modes (see `pipelines/finetune.py`):

- ``"dynamics"`` (SimDist): train only the latent dynamics block (`dynamics_net`); encoder,
  context tokeniser, reward / value heads, policy prior and the sim normalisation statistics
  stay frozen and bit-identical.
- ``"residual"`` (ReDRAW): freeze the WHOLE distilled model, base dynamics included, and train
  a small residual δ(z, a) (one hidden layer of `residual_hidden`, default latent_size // 2,
  LayerNorm + SiLU, zero-initialised last layer, so step 0 is exactly the zero-shot model).
  It is trained with `lr_peak * residual_lr_multiplier` (and `lr_final * multiplier`).

The presets here are the generic defaults, for robots that bring none of their own: a robot's
finetune presets (`Robot.finetune_presets`, in its folder) come first. The sizes of the model
come from the model directory being finetuned, not from the preset.

- ``tiny``: tests; 300 steps on the tiny test model, ~10 s.
- ``default``: a 2-core CPU: 1000 steps of batch 32 at lr 1e-3 (about 15 s in mode dynamics);
  more steps overfit (the cartpole's measurements: robots/cartpole/presets.py).
- ``paper``: the reference's recipe, Adam lr 2e-4 with warmup, batch 32, ReDRAW's 100x
  residual learning rate; a GPU budget.

Residual learning rate: ReDRAW trains its residual at ~100x the base rate (2e-4 -> 2e-2).
The CPU presets use a higher base rate (1e-3, to adapt in a minute), and there 10x, 30x and
100x were all stable (held-out latent ratio after/before on the default model: 0.31, 0.30,
0.32; on the tiny model: 0.42, 0.40, 0.39): the residual's small capacity, not its learning
rate, limits it. The CPU presets use 30x (an effective 3e-2); `paper` keeps 100x of 2e-4.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from simdist.config import with_overrides
from simdist.errors import ConfigError

MODES = ("dynamics", "residual")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    preset: str
    seed: int = 0
    mode: str = "dynamics"  # "dynamics" | "residual"
    steps: int = 4_000
    batch_size: int = 32  # the reference's
    lr_peak: float = 1e-3  # linear warmup to lr_peak, then cosine to lr_final
    lr_final: float = 1e-4
    warmup_steps: int = 100
    residual_lr_multiplier: float = 30.0  # residual mode: lr × this (ReDRAW: ~100x a 2e-4 base)
    residual_hidden: int | None = None  # residual width; None -> latent_size // 2 (ReDRAW)
    heldout_fraction: float = 0.2  # share of real episodes held out (whole episodes, fixed)
    max_transitions: int | None = None  # train on the first N transitions (whole episodes, in order)
    eval_every: int = 500
    eval_windows: int = 4096  # held-out windows scored (all of them when fewer)
    checkpoint_every: int = 1_000
    grad_clip: float = 1.0
    # Proximal penalty: proximal * sum over the trainable weights of (w - w_sim)^2, which
    # pulls the finetuned weights toward the simulation-trained ones (0 = off).
    proximal: float = 0.0
    # Sim replay: this share of every batch is windows of the simulation (Stage 2) dataset the
    # parent was distilled from (or `sim_data`), so the dynamics stay right where the real
    # data says nothing (0 = off).
    sim_fraction: float = 0.0
    sim_data: str | None = None

    def __post_init__(self):
        def bad(msg: str):
            raise ConfigError(f"FinetuneConfig: {msg}")

        if self.mode not in MODES:
            bad(f"unknown mode '{self.mode}' (choose from {', '.join(MODES)})")
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "eval_windows"):
            if int(getattr(self, name)) < 1:
                bad(f"{name} must be >= 1")
        if self.warmup_steps < 0:
            bad("warmup_steps must be >= 0")
        if not (self.lr_peak > 0 and self.lr_final >= 0):
            bad(f"learning rates must be positive (peak {self.lr_peak}, final {self.lr_final})")
        if not self.residual_lr_multiplier > 0:
            bad("residual_lr_multiplier must be > 0")
        if self.residual_hidden is not None and self.residual_hidden < 1:
            bad("residual_hidden must be >= 1 (or None for latent_size // 2)")
        if not 0 < self.heldout_fraction < 1:
            bad("heldout_fraction must lie in (0, 1)")
        if self.max_transitions is not None and self.max_transitions < 1:
            bad("max_transitions must be >= 1 (or None for all the real data)")
        if self.grad_clip < 0:
            bad("grad_clip must be >= 0 (0 = no clipping)")
        if self.proximal < 0:
            bad("proximal must be >= 0 (0 = off)")
        if not 0.0 <= self.sim_fraction < 1.0:
            bad("sim_fraction must lie in [0, 1) (0 = off; some of every batch must be real)")

    @property
    def lr_scale(self) -> float:
        """The factor on lr_peak / lr_final for this mode (the residual's multiplier)."""
        return self.residual_lr_multiplier if self.mode == "residual" else 1.0


def _tiny(seed: int) -> FinetuneConfig:
    return FinetuneConfig(preset="tiny", seed=seed, steps=300, batch_size=32, lr_peak=1e-3, lr_final=1e-4,
                          warmup_steps=20, residual_lr_multiplier=30.0, eval_every=100, eval_windows=1024,
                          checkpoint_every=100)


def _default(seed: int) -> FinetuneConfig:
    return FinetuneConfig(preset="default", seed=seed, steps=1_000, batch_size=32, lr_peak=1e-3, lr_final=1e-4,
                          warmup_steps=50, residual_lr_multiplier=30.0, eval_every=250, eval_windows=4096,
                          checkpoint_every=250)


def _paper(seed: int) -> FinetuneConfig:
    # The reference: Adam, lr 2e-4 with warmup, batch 32; ReDRAW's residual at 100x the base.
    return FinetuneConfig(preset="paper", seed=seed, steps=50_000, batch_size=32, lr_peak=2e-4, lr_final=2e-5,
                          warmup_steps=1_000, residual_lr_multiplier=100.0, eval_every=2_500,
                          eval_windows=16_384, checkpoint_every=5_000)


#: preset name -> FinetuneConfig factory (seed as argument): the generic defaults.
FINETUNE_PRESETS: dict[str, Callable[[int], FinetuneConfig]] = {"tiny": _tiny, "default": _default, "paper": _paper}


def finetune_config(preset: str, seed: int = 0, mode: str | None = None,
                    overrides: dict[str, Any] | None = None, robot=None) -> FinetuneConfig:
    """The preset's config, with `mode` and dotted `--set` overrides applied.

    `robot` (a `Robot` or a robot name; None: generic) picks the robot's own finetune presets
    when it has any; otherwise the generic `FINETUNE_PRESETS` are used."""
    cfg = None
    if robot is not None:
        if isinstance(robot, str):
            from simdist.robot import get_robot

            robot = get_robot(robot)
        cfg = robot.finetune_config(preset, seed)
    if cfg is None:
        if preset not in FINETUNE_PRESETS:
            raise ConfigError(f"no finetune preset '{preset}'; presets: {', '.join(FINETUNE_PRESETS)}")
        cfg = FINETUNE_PRESETS[preset](seed)
    if mode is not None:
        cfg = dataclasses.replace(cfg, mode=mode)
    return with_overrides(cfg, overrides or {})
