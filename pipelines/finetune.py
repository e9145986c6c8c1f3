"""Stage 4: finetune a distilled world model on real-robot data (dynamics only, or a ReDRAW residual).

Real data needs no rewards and no values: the loss is latent consistency only,
‖ẑ_{t+k} − sg(enc(o_{t+k}))‖², with the encoder frozen. A labelled (sim) dataset is accepted
too; its labels are never loaded.

Modes
-----
- ``dynamics`` (SimDist): the trainable block is `dynamics_net` (filter `DYNAMICS`); everything
  else, including the sim normalisation statistics, is passed through the optimiser step
  untouched and stays bit-identical.
- ``residual`` (ReDRAW): the distilled model is copied, every parameter and statistic, into a
  model of the same config plus a residual block of width `residual_hidden` (default
  latent_size // 2) whose last layer is zero, so step 0 predicts exactly what the parent
  predicts (`with_residual`). Only `residual_net` trains, at lr × `residual_lr_multiplier`.

Option ``sim_fraction`` (f > 0) draws a share f of every batch from the simulation (Stage 2)
dataset the parent was distilled from (its path is in the model's meta; ``sim_data`` overrides
it), labels dropped: the same latent-consistency loss keeps the dynamics right on the states
the real data never visits.

Option ``proximal`` (λ > 0) adds λ Σ (w − w_sim)² over the trainable weights to the loss
(`proximal_loss`): the finetuned dynamics stay near the simulation's where the real data does
not pull them away.

Real data and the held-out split
--------------------------------
Windows use the PARENT model's history and horizon. The held-out split is by whole episode over
the WHOLE real dataset (`heldout_mask`), so a sweep over `max_transitions` scores every amount on
the same held-out episodes. `max_transitions` limits the TRAINING data: the first training
episodes, whole and in order, whose lengths sum to at most N. The report's "real data used" is
that training data (transitions, episodes, seconds of robot time = transitions × control_dt).

Run directory layout (OUT), a model directory that `deploy` accepts once the run has finished:
  config.json        the FinetuneConfig, the parent model directory and the real-data path
  checkpoints/       resumable training state (orbax; newest two kept)
  history.jsonl      training loss and held-out latent error every `eval_every` steps (step 0 =
                     the parent model, before any update)
  metrics.json       held-out latent error before / after (mean and per horizon step), the
                     trainable parameter count, the real data used, wall time
  latent_error.png   held-out latent error per horizon step, before vs after
  model.json, weights/   the finetuned model (meta: source "finetune", mode, parent, real data)
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.config import to_dict
from simdist.data.dataset import Dataset
from simdist.data.windows import WindowSampler, heldout_mask
from simdist.errors import ConfigError, DatasetError
from simdist.models.finetune_config import FinetuneConfig, finetune_config
from simdist.models.evaluate import latent_report
from simdist.models.io import load_model, save_model
from simdist.models.loss import world_model_loss
from simdist.models.train import WorldModelStage, WorldModelTrainer, make_optimizer
from simdist.models.world_model import DYNAMICS, RESIDUAL, WorldModel, count_params
from simdist.runlog import save_figure
from simdist.training import FailAt, LoopResult, RunSpec, prepare_run_dir, run

TRAIN_STATE_KIND = "finetune_train_state"
LABEL_KEYS = ("reward", "value", "expert", "noisy")  # never part of the finetuning loss


@dataclass
class FinetuneResult:
    out: Path
    started_at: int
    step: int
    metrics: dict[str, Any] | None  # None when stopped early
    seconds: float


def make_config(preset: str, seed: int = 0, mode: str | None = None,
                overrides: dict[str, Any] | None = None, robot=None) -> FinetuneConfig:
    """The finetune preset: the robot's own (a Robot or name) when given, else the generic one."""
    return finetune_config(preset, seed, mode, overrides, robot=robot)


# ---- the residual model ------------------------------------------------------------------


def _merge_pure(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict):
            _merge_pure(dst.setdefault(k, {}), v)
        else:
            dst[k] = v


def with_residual(model: WorldModel, hidden: int | None = None, seed: int = 0) -> WorldModel:
    """A copy of `model` with a ReDRAW residual block of width `hidden` (None: latent_size // 2).

    Every parameter and statistic of `model` is copied; the residual keeps its initialisation
    (seeded by `seed`) with a zero last layer, so the new model's predictions are bit-identical
    to `model`'s. A model that already has a residual keeps it and its weights (`hidden` None
    or equal to its width), so a residual model can be finetuned further.
    """
    cfg = model.cfg
    if hidden is None:
        hidden = cfg.residual_hidden if model.has_residual else max(1, cfg.latent_size // 2)
    hidden = int(hidden)
    if model.has_residual and cfg.residual_hidden != hidden:
        raise ConfigError(f"the model already has a residual of width {cfg.residual_hidden}, not {hidden}")
    new = WorldModel(dataclasses.replace(cfg, residual_hidden=hidden), rngs=nnx.Rngs(seed))
    state = nnx.state(new)
    pure = nnx.to_pure_dict(state)
    _merge_pure(pure, nnx.to_pure_dict(nnx.state(model)))
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(new, state)
    return new


# ---- real data ---------------------------------------------------------------------------


class _EpisodeView:
    """Some episodes of a Dataset, as a WindowSampler sees a dataset (read-only)."""

    def __init__(self, ds: Dataset, episodes: np.ndarray):
        self._ds = ds
        self._eps = ds.episodes()[np.asarray(episodes, np.int64)]
        self.path = ds.path
        self.field_names = ds.field_names

    def episodes(self) -> np.ndarray:
        return self._eps.copy()

    def chunk_rows(self, field: str) -> int:
        return self._ds.chunk_rows(field)

    def read_ranges(self, field: str, starts, stops) -> np.ndarray:
        return self._ds.read_ranges(field, starts, stops)


@dataclass
class RealData:
    dataset: Dataset
    train: WindowSampler
    heldout: WindowSampler
    info: dict[str, Any]  # what was used: see `split_real_data`


def open_real_dataset(path: Path, model: WorldModel, meta: dict[str, Any]) -> Dataset:
    """Open `path` for the model's robot and sizes; labels are not required (and not used)."""
    m = model.cfg
    ds = Dataset.open(path, robot=meta.get("robot"), obs_size=m.obs_size, action_size=m.action_size,
                      command_size=m.command_size)
    want_dt = meta.get("control_dt")
    if want_dt is not None and not math.isclose(ds.spec.control_dt, float(want_dt), rel_tol=1e-6):
        raise DatasetError(f"{ds.path}: dataset has control_dt {ds.spec.control_dt:g} s, the model was "
                           f"distilled at {float(want_dt):g} s")
    return ds


def split_real_data(ds: Dataset, history: int, horizon: int, *, heldout_fraction: float,
                    max_transitions: int | None = None, seed: int = 0) -> RealData:
    """Train / held-out window samplers of a real dataset (see the module docstring)."""
    p = ds.path
    eps = ds.episodes()
    n = len(eps)
    held = heldout_mask(n, heldout_fraction)
    if n < 2 or not held.any():
        raise DatasetError(f"{p}: {n} episode(s); finetuning needs at least 2 (whole episodes are held out "
                           "for evaluation); record more real episodes")
    lengths = eps[:, 1]
    held_idx = np.nonzero(held)[0]
    if not np.any(lengths[held_idx] >= horizon + 1):
        raise DatasetError(
            f"{p}: no held-out episode is longer than horizon+1 = {horizon + 1} steps ({len(held_idx)} held-out "
            f"episodes, longest {int(lengths[held_idx].max())}); record more (or longer) real episodes")
    train_idx = np.nonzero(~held)[0]
    if max_transitions is not None:
        cum = np.cumsum(lengths[train_idx])
        keep = int(np.searchsorted(cum, int(max_transitions), side="right"))
        if keep == 0:
            raise DatasetError(f"{p}: max_transitions {max_transitions} is less than the first training episode "
                               f"({int(lengths[train_idx[0]])} transitions); use whole episodes")
        train_idx = train_idx[:keep]
    if not np.any(lengths[train_idx] >= horizon + 1):
        raise DatasetError(
            f"{p}: no training episode is longer than horizon+1 = {horizon + 1} steps ({len(train_idx)} episodes, "
            f"longest {int(lengths[train_idx].max())}); record more (or longer) real episodes")
    fields = ("command",) if "command" in ds.field_names else ()
    common = dict(split="all", seed=seed, fields=fields)
    train = WindowSampler(_EpisodeView(ds, train_idx), history, horizon, **common)
    heldout = WindowSampler(_EpisodeView(ds, held_idx), history, horizon, **common)
    dt = float(ds.spec.control_dt)
    used = int(lengths[train_idx].sum())
    info = {
        "path": str(Path(p).resolve()),
        "source": ds.spec.source,
        "control_dt": dt,
        "max_transitions": max_transitions,
        "transitions": used,
        "episodes": int(len(train_idx)),
        "seconds": round(used * dt, 3),
        "train_windows": int(train.n_windows),
        "heldout_episodes": int(len(held_idx)),
        "heldout_transitions": int(lengths[held_idx].sum()),
        "heldout_windows": int(heldout.n_windows),
        "dataset_episodes": int(n),
        "dataset_transitions": int(ds.n_transitions),
    }
    return RealData(ds, train, heldout, info)


def strip_labels(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without reward / value / expert / noisy: the loss is then latent consistency only."""
    return {k: v for k, v in batch.items() if k not in LABEL_KEYS}


# ---- held-out latent error (the report itself is simdist.models.evaluate.latent_report) ---


def eval_windows(heldout: WindowSampler, max_windows: int) -> dict[str, np.ndarray]:
    """A fixed set of held-out windows: all of them, or a fixed pseudo-random `max_windows` subset."""
    n = min(heldout.n_windows, int(max_windows))
    batch = next(heldout.iterate(n))
    return strip_labels({k: v for k, v in batch.items() if k != "mask"})


def plot_before_after(metrics: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = metrics["latent_error_per_step_before"]
    k = np.arange(1, len(before) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(k, before, marker=".", label=f"before (zero-shot), mean {metrics['latent_error_before']:.4f}")
    ax.plot(k, metrics["latent_error_per_step_after"], marker=".",
            label=f"after ({metrics['mode']}), mean {metrics['latent_error_after']:.4f}")
    ax.plot(k, metrics["latent_error_hold_still_per_step"], ls="--", color="grey", label="hold-still baseline")
    ax.set_yscale("log")
    ax.set_xlabel("horizon step k")
    ax.set_ylabel("held-out latent MSE (real data)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# ---- the pipeline ------------------------------------------------------------------------


def proximal_loss(model0: WorldModel, trainable: Any, weight: float):
    """The world-model loss plus `weight` * sum of (w - w0)^2 over the trainable weights, w0
    those of `model0` (the simulation-trained model): finetuning may move the dynamics only
    as far as the real data pays for."""
    anchor = nnx.to_pure_dict(nnx.state(model0, trainable))

    def loss_fn(model, batch, key, *, train: bool = True):
        loss, metrics = world_model_loss(model, batch, key, train=train)
        now = nnx.to_pure_dict(nnx.state(model, trainable))
        sq = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), now, anchor)
        prox = weight * sum(jax.tree.leaves(sq))
        return loss + prox, {**metrics, "proximal": prox}

    return loss_fn


def sim_windows(cfg: FinetuneConfig) -> int:
    """How many windows of each batch come from the simulation dataset."""
    return int(round(cfg.batch_size * cfg.sim_fraction))


def open_sim_replay(cfg: FinetuneConfig, parent: WorldModel, parent_meta: dict[str, Any], real: Dataset
                    ) -> WindowSampler | None:
    """The window sampler of the simulation dataset for sim replay, or None when off."""
    if sim_windows(cfg) == 0:
        return None
    path = cfg.sim_data or parent_meta.get("dataset")
    if not path:
        raise ConfigError("sim_fraction > 0 needs the simulation dataset: the model does not name it; "
                          "set sim_data=PATH")
    ds = Dataset.open(path, robot=parent_meta.get("robot"), obs_size=parent.cfg.obs_size,
                      action_size=parent.cfg.action_size, command_size=parent.cfg.command_size)
    fields = tuple(f for f in ("command",) if f in real.field_names and f in ds.field_names)
    return WindowSampler(ds, parent.cfg.history, parent.cfg.horizon, split="all", seed=cfg.seed, fields=fields,
                         max_resident_transitions=500_000)


def initial_model(parent: WorldModel, cfg: FinetuneConfig) -> tuple[WorldModel, Any]:
    """(the model at step 0, the trainable filter) for the config's mode."""
    if cfg.mode == "residual":
        return with_residual(parent, cfg.residual_hidden, cfg.seed), RESIDUAL
    return parent, DYNAMICS


class _FinetuneStage(WorldModelStage):
    """Latent-consistency steps on real training windows; held-out latent error."""

    def __init__(self, cfg: FinetuneConfig, out: Path, model_dir: Path, parent_meta: dict[str, Any], data: RealData,
                 trainer: WorldModelTrainer, held: dict[str, np.ndarray], before: dict[str, Any], t_start: float):
        super().__init__(trainer, cfg.seed, cfg.batch_size)
        self.cfg, self.out, self.model_dir, self.parent_meta, self.data = cfg, out, model_dir, parent_meta, data
        self.held, self.before, self.t_start = held, before, t_start
        self.robot = parent_meta.get("robot")
        self.sim: WindowSampler | None = None  # the sim-replay windows (sim_fraction > 0)

    def batch(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.cfg.seed, 0, step])
        n_sim = sim_windows(self.cfg) if self.sim is not None else 0
        real = strip_labels(self.data.train.sample(self.cfg.batch_size - n_sim, rng))
        if not n_sim:
            return real
        sim = strip_labels(self.sim.sample(n_sim, rng))
        return {k: np.concatenate([real[k], sim[k]]) for k in real}

    def evaluate(self, step: int, metrics: list[dict[str, float]]) -> tuple[dict[str, Any], dict[str, str]]:
        rep = self.before if step == 0 else latent_report(self.trainer.model(), self.held)
        row = self.row(step, metrics, heldout_latent=rep["latent_error_mean"])
        return row, {"held-out": f"latent {row['heldout_latent']:.4f} (before {self.before['latent_error_mean']:.4f})"}

    def finish(self, result: LoopResult) -> dict[str, Any]:
        cfg, data, before, robot, parent_meta = self.cfg, self.data, self.before, self.robot, self.parent_meta
        final_model = self.trainer.model()
        after = latent_report(final_model, self.held)
        report = {
            "robot": robot,
            "mode": cfg.mode,
            "preset": cfg.preset,
            "seed": cfg.seed,
            "steps": cfg.steps,
            "heldout_windows": before["windows"],
            "latent_error_before": before["latent_error_mean"],
            "latent_error_after": after["latent_error_mean"],
            "latent_error_ratio": after["latent_error_mean"] / max(before["latent_error_mean"], 1e-30),
            "latent_error_per_step_before": before["latent_error_per_step"],
            "latent_error_per_step_after": after["latent_error_per_step"],
            "latent_error_hold_still_per_step": before["latent_error_hold_still_per_step"],
            "trainable_parameters": count_params(final_model, self.trainer.trainable_filter),
            "parameters": count_params(final_model),
            "residual_hidden": final_model.cfg.residual_hidden,
            "real_data": data.info,
            "parent_model": str(self.model_dir.resolve()),
            "train_seconds_this_invocation": round(result.seconds, 2),
            "wall_seconds_this_invocation": round(time.perf_counter() - self.t_start, 2),
            "steps_per_second_this_invocation": round(result.steps_done / max(result.seconds, 1e-9), 1),
        }
        plot_before_after(report, self.out / "latent_error.png",
                          f"{robot}: finetune ({cfg.mode}) on {data.info['seconds']:g} s of real data")
        save_model(self.out, final_model, {
            "robot": robot,
            "source": "finetune",
            "mode": cfg.mode,
            "parent_model": str(self.model_dir.resolve()),
            "parent_source": parent_meta.get("source"),
            "real_data": data.info["path"],
            "real_data_used": {k: data.info[k] for k in ("transitions", "episodes", "seconds", "max_transitions")},
            "control_dt": parent_meta.get("control_dt", data.info["control_dt"]),
            "finetune": to_dict(cfg),
            **({"distill": parent_meta["distill"]} if "distill" in parent_meta else {}),
            **({"dataset": parent_meta["dataset"]} if "dataset" in parent_meta else {}),
            "heldout": {"latent_error_before": report["latent_error_before"],
                        "latent_error_after": report["latent_error_after"]},
        })
        return report


def finetune(
    cfg: FinetuneConfig,
    model_dir: Path,
    real_data: Path,
    out: Path,
    *,
    show_progress: bool = True,
    stop_after: int | None = None,
    fail_at: FailAt | None = None,
) -> FinetuneResult:
    """Finetune (or resume finetuning) the model in `model_dir` on the real data into `out`."""
    t_start = time.perf_counter()
    model_dir, real_data, out = Path(model_dir), Path(real_data), Path(out)
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out {out} is the parent model directory; finetune writes a new model directory")
    parent, parent_meta = load_model(model_dir)
    robot = parent_meta.get("robot")
    ds = open_real_dataset(real_data, parent, parent_meta)
    m = parent.cfg
    data = split_real_data(ds, m.history, m.horizon, heldout_fraction=cfg.heldout_fraction,
                           max_transitions=cfg.max_transitions, seed=cfg.seed)
    sim = open_sim_replay(cfg, parent, parent_meta, ds)  # before the run directory: a bad path writes nothing
    prepare_run_dir(out, {"finetune": to_dict(cfg), "model": str(model_dir.resolve()),
                          "real_data": str(real_data.resolve())}, "finetune")

    model0, trainable = initial_model(parent, cfg)
    s = cfg.lr_scale
    tx = make_optimizer(cfg.lr_peak * s, cfg.lr_final * s, cfg.warmup_steps, cfg.steps, grad_clip=cfg.grad_clip)
    loss_fn = proximal_loss(model0, trainable, cfg.proximal) if cfg.proximal > 0 else world_model_loss
    trainer = WorldModelTrainer(model0, tx, trainable=trainable, loss_fn=loss_fn)
    held = eval_windows(data.heldout, cfg.eval_windows)
    before = latent_report(model0, held)
    stage = _FinetuneStage(cfg, out, model_dir, parent_meta, data, trainer, held, before, t_start)
    stage.sim = sim
    spec = RunSpec(out, f"finetune {robot} ({cfg.mode})", TRAIN_STATE_KIND, to_dict(cfg), cfg.steps,
                   cfg.checkpoint_every, eval_every=cfg.eval_every, eval_at_start=True, meta={"robot": robot},
                   diverged_hint="; try a lower lr_peak")
    res = run(spec, stage, show_progress=show_progress, stop_after=stop_after, fail_at=fail_at)
    return FinetuneResult(out, res.started_at, trainer.steps, res.metrics, res.seconds)
