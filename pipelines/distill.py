"""Stage 3: distill a latent world model from a Stage 2 dataset.

Run directory layout (OUT), which is also a model directory that `deploy` and `finetune`
accept once the run has finished:
  config.json        the DistillConfig and the dataset path
  checkpoints/       resumable training state (orbax; newest two kept)
  history.jsonl      training loss and held-out metrics every `eval_every` steps
  metrics.json       the final held-out report (per-horizon latent error, reward and value
                     R², behaviour-cloning error)
  horizon_error.png  held-out error against the horizon step
  model.json, weights/   the trained model and the dataset's normalisation statistics
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from simdist.config import to_dict, with_overrides
from simdist.data.dataset import Dataset
from simdist.data.windows import LABEL_FIELDS, WindowSampler
from simdist.errors import ConfigError, DatasetError
from simdist.models.distill_config import DistillConfig
from simdist.models.evaluate import heldout_report
from simdist.models.io import save_model
from simdist.models.train import WorldModelStage, WorldModelTrainer, make_optimizer
from simdist.models.world_model import WorldModel, count_params
from simdist.models.world_model import DYNAMICS as DYNAMICS_FILTER
from simdist.robots import get_robot
from simdist.runlog import save_figure
from simdist.training import FailAt, LoopResult, RunSpec, prepare_run_dir, run

TRAIN_STATE_KIND = "distill_train_state"


@dataclass
class DistillResult:
    out: Path
    started_at: int
    step: int
    metrics: dict[str, Any] | None  # None when stopped early
    seconds: float


def make_config(robot: str, preset: str, seed: int, overrides: dict[str, Any] | None = None) -> DistillConfig:
    cfg = get_robot(robot).distill_config(preset, seed)
    return with_overrides(cfg, overrides or {})


def open_dataset(path: Path, cfg: DistillConfig) -> Dataset:
    m = cfg.model
    return Dataset.open(
        path,
        robot=cfg.robot,
        obs_size=m.obs_size,
        action_size=m.action_size,
        command_size=m.command_size,
        require_labels=True,
    )


def _window_fields(ds: Dataset, cfg: DistillConfig) -> tuple[str, ...]:
    """The sampler's default fields, plus `expert_action` for the relabelled BC target."""
    fields = [f for f in LABEL_FIELDS if f in ds.field_names]
    if cfg.model.bc_target == "relabelled":
        if "expert_action" not in ds.field_names:
            raise DatasetError(f"{ds.path}: model.bc_target 'relabelled' needs a dataset with expert_action labels"
                               " (generate it again with this version, or use --set model.bc_target=expert)")
        fields.append("expert_action")
    return tuple(fields)


def _check_out(out: Path, data_path: Path) -> None:
    """--out must not be the dataset, lie inside it, or be another dataset (before anything is written)."""
    o, d = Path(out).resolve(), Path(data_path).resolve()
    if o == d or d in o.parents:
        raise ConfigError(f"--out {out} is (inside) the dataset {data_path}; choose another --out")
    if (o / "zarr.json").exists():
        raise ConfigError(f"--out {out} is a dataset directory; choose another --out")


def plot_report(report: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.arange(1, len(report["latent_error_per_step"]) + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(k, report["latent_error_per_step"], marker=".", label="world model")
    a1.plot(k, report["latent_error_hold_still_per_step"], ls="--", label="hold-still baseline")
    a1.set_yscale("log")
    a1.set_xlabel("horizon step k")
    a1.set_ylabel("held-out latent MSE")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(k, report["reward_r2_per_step"], marker=".", label="reward")
    a2.plot(k, report["value_r2_per_step"], marker=".", label="value")
    a2.axhline(0.9, color="grey", ls=":", lw=1)
    a2.set_ylim(min(0.0, min(report["reward_r2_per_step"] + report["value_r2_per_step"])), 1.02)
    a2.set_xlabel("horizon step k")
    a2.set_ylabel("held-out R²")
    a2.legend()
    a2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


class _DistillStage(WorldModelStage):
    """World-model steps on training windows; held-out evaluation on a fixed set of windows."""

    def __init__(self, cfg: DistillConfig, ds: Dataset, data_path: Path, out: Path, train: WindowSampler,
                 held: WindowSampler, trainer: WorldModelTrainer):
        super().__init__(trainer, cfg.seed, cfg.batch_size)
        self.cfg, self.ds, self.data_path, self.out, self.train, self.held = cfg, ds, data_path, out, train, held
        self.eval_set = held.sample(cfg.eval_windows, np.random.default_rng([cfg.seed, 1]))

    def batch(self, step: int) -> dict[str, Any]:
        return self.train.sample(self.cfg.batch_size, np.random.default_rng([self.cfg.seed, 0, step]))

    def evaluate(self, step: int, metrics: list[dict[str, float]]) -> tuple[dict[str, Any], dict[str, str]]:
        cfg = self.cfg
        rep = heldout_report(self.trainer, self.eval_set, cfg.batch_size, cfg.r2_steps)
        row = self.row(step, metrics, heldout_latent=rep["latent_error_mean"],
                       heldout_reward_r2=rep[f"reward_r2_first_{cfg.r2_steps}"],
                       heldout_value_r2=rep[f"value_r2_first_{cfg.r2_steps}"], heldout_bc_mse=rep["bc_action_mse"])
        live = (f"latent {row['heldout_latent']:.4f}  R² r {row['heldout_reward_r2']:.3f} "
                f"v {row['heldout_value_r2']:.3f}")
        return row, {"held-out": live}

    def finish(self, result: LoopResult) -> dict[str, Any]:
        cfg, m, ds = self.cfg, self.cfg.model, self.ds
        final_set = self.held.sample(cfg.final_eval_windows, np.random.default_rng([cfg.seed, 2]))
        report = heldout_report(self.trainer, final_set, cfg.batch_size, cfg.r2_steps)
        final_model = self.trainer.model()
        dataset = str(Path(self.data_path).resolve())
        report.update(
            robot=cfg.robot,
            preset=cfg.preset,
            seed=cfg.seed,
            steps=cfg.steps,
            dynamics=m.dynamics,
            parameters=count_params(final_model),
            dynamics_parameters=count_params(final_model, DYNAMICS_FILTER),
            dataset=dataset,
            dataset_transitions=ds.n_transitions,
            train_seconds_this_invocation=round(result.seconds, 2),
            windows_per_second_this_invocation=round(result.steps_done * cfg.batch_size / max(result.seconds, 1e-9), 1),
        )
        plot_report(report, self.out / "horizon_error.png",
                    f"{cfg.robot} world model ({cfg.preset}, {m.dynamics}): held-out")
        save_model(self.out, final_model, {
            "robot": cfg.robot,
            "source": "distill",
            "distill": to_dict(cfg),
            "dataset": dataset,
            "control_dt": float(ds.spec.control_dt),
            "heldout": {k: report[k] for k in (f"reward_r2_first_{cfg.r2_steps}", f"value_r2_first_{cfg.r2_steps}",
                                               "latent_error_mean")},
        })
        return report


def distill(
    cfg: DistillConfig,
    data_path: Path,
    out: Path,
    *,
    show_progress: bool = True,
    stop_after: int | None = None,
    fail_at: FailAt | None = None,
) -> DistillResult:
    """Train (or resume) a world model on the dataset at `data_path` into `out`."""
    out = Path(out)
    _check_out(out, data_path)
    ds = open_dataset(data_path, cfg)
    fields = _window_fields(ds, cfg)  # before the run directory exists
    prepare_run_dir(out, {"distill": to_dict(cfg), "dataset": str(Path(data_path).resolve())}, "distill")
    m = cfg.model
    common = dict(heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, max_resident_transitions=cfg.max_resident_transitions,
                  fields=fields)
    train_windows = WindowSampler(ds, m.history, m.horizon, split="train", **common)
    held_windows = WindowSampler(ds, m.history, m.horizon, split="heldout", **common)
    model = WorldModel(m, rngs=nnx.Rngs(cfg.seed), stats=ds.stats())
    tx = make_optimizer(cfg.lr_peak, cfg.lr_final, cfg.warmup_steps, cfg.steps, grad_clip=cfg.grad_clip,
                        weight_decay=cfg.weight_decay)
    stage = _DistillStage(cfg, ds, data_path, out, train_windows, held_windows, WorldModelTrainer(model, tx))
    spec = RunSpec(out, f"distill {cfg.robot}", TRAIN_STATE_KIND, to_dict(cfg), cfg.steps, cfg.checkpoint_every,
                   eval_every=cfg.eval_every, eval_at_start=True, meta={"robot": cfg.robot})
    res = run(spec, stage, show_progress=show_progress, stop_after=stop_after, fail_at=fail_at)
    return DistillResult(out, res.started_at, stage.trainer.steps, res.metrics, res.seconds)
