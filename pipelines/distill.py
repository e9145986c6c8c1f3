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

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.checkpointing import Checkpoints
from simdist.config import read_json, to_dict, with_overrides, write_json
from simdist.data.dataset import Dataset
from simdist.data.windows import LABEL_FIELDS, WindowSampler
from simdist.errors import CheckpointError, DatasetError, TrainingDivergedError
from simdist.models.distill_config import DistillConfig
from simdist.models.io import save_model
from simdist.models.train import WorldModelTrainer, make_optimizer
from simdist.models.world_model import WorldModel, count_params
from simdist.models.world_model import DYNAMICS as DYNAMICS_FILTER
from simdist.progress import console, progress_bar
from simdist.runlog import append_history, latest_train_state, save_figure, truncate_history
from simdist.robots import get_robot

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


def _check_or_write_config(out: Path, cfg: DistillConfig, data_path: Path) -> None:
    path = out / "config.json"
    want = {"distill": to_dict(cfg), "dataset": str(Path(data_path).resolve())}
    if path.exists():
        have = read_json(path)
        if have.get("distill", {}).get("robot") != cfg.robot:
            raise CheckpointError(f"{out} holds a distill run for robot '{have.get('distill', {}).get('robot')}', "
                                  f"not '{cfg.robot}'; choose another --out")
        if have != want:
            raise CheckpointError(f"{out} holds a distill run with another config or dataset; "
                                  "resume it with the same options or choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)


def _batches(windows: dict[str, np.ndarray], size: int):
    n = len(next(iter(windows.values())))
    for i in range(0, n - size + 1, size):
        yield {k: v[i : i + size] for k, v in windows.items()}


@functools.partial(jax.jit, static_argnums=0)
def _hold_still(graphdef, state, obs):
    """Baseline: predict that the latent stays where it is (z_{t+k} = z_t); also the targets'
    variance. Module-level so that it compiles once, not at every evaluation."""
    z = nnx.merge(graphdef, state).encode(obs)
    return ((z[:, 1:] - z[:, :1]) ** 2).mean(axis=(0, 2)), z[:, 1:].var(axis=0).mean(axis=-1)


def heldout_report(trainer: WorldModelTrainer, windows: dict[str, np.ndarray], batch_size: int, r2_steps: int) -> dict[str, Any]:
    """Held-out metrics over a fixed set of windows, aggregated over batches exactly."""
    graphdef, state = nnx.split(trainer.model())

    lat, base, tvar, rp, vp, rl, vl, bc = [], [], [], [], [], [], [], []
    for b in _batches(windows, batch_size):
        m = jax.device_get(trainer.evaluate(b))
        hs, tv = jax.device_get(_hold_still(graphdef, state, jnp.asarray(b["obs"])))
        lat.append(m["latent_h"]), base.append(hs), tvar.append(tv)
        rp.append(m["reward_pred"]), vp.append(m["value_pred"]), bc.append(float(m["bc_mse_raw"]))
        rl.append(b["reward"]), vl.append(b["value"])
    rp, vp, rl, vl = (np.concatenate(x) for x in (rp, vp, rl, vl))

    def r2(p, y):
        return float(1.0 - np.sum((p - y) ** 2) / max(np.sum((y - y.mean()) ** 2), 1e-12))

    horizon = rp.shape[1]
    latent_h = np.mean(lat, axis=0)
    return {
        "windows": int(len(rp)),
        "latent_error_per_step": [float(x) for x in latent_h],
        "latent_error_hold_still_per_step": [float(x) for x in np.mean(base, axis=0)],
        "latent_target_variance_per_step": [float(x) for x in np.mean(tvar, axis=0)],
        "latent_error_mean": float(latent_h.mean()),
        "reward_r2_per_step": [r2(rp[:, k], rl[:, k]) for k in range(horizon)],
        "value_r2_per_step": [r2(vp[:, k], vl[:, k]) for k in range(horizon)],
        f"reward_r2_first_{r2_steps}": r2(rp[:, :r2_steps], rl[:, :r2_steps]),
        f"value_r2_first_{r2_steps}": r2(vp[:, :r2_steps], vl[:, :r2_steps]),
        "reward_r2_all": r2(rp, rl),
        "value_r2_all": r2(vp, vl),
        "bc_action_mse": float(np.mean(bc)),
        "bc_action_rmse": float(np.sqrt(np.mean(bc))),
    }


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


def distill(
    cfg: DistillConfig,
    data_path: Path,
    out: Path,
    *,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> DistillResult:
    """Train (or resume) a world model on the dataset at `data_path` into `out`."""
    out = Path(out)
    ds = open_dataset(data_path, cfg)
    fields = _window_fields(ds, cfg)  # before the run directory exists
    _check_or_write_config(out, cfg, data_path)
    m = cfg.model
    common = dict(heldout_fraction=cfg.heldout_fraction, seed=cfg.seed, max_resident_transitions=cfg.max_resident_transitions,
                  fields=fields)
    train_windows = WindowSampler(ds, m.history, m.horizon, split="train", **common)
    held_windows = WindowSampler(ds, m.history, m.horizon, split="heldout", **common)
    stats = ds.stats()
    model = WorldModel(m, rngs=nnx.Rngs(cfg.seed), stats=stats)
    tx = make_optimizer(cfg.lr_peak, cfg.lr_final, cfg.warmup_steps, cfg.steps, grad_clip=cfg.grad_clip,
                        weight_decay=cfg.weight_decay)
    trainer = WorldModelTrainer(model, tx)
    meta_base = {"config": to_dict(cfg), "robot": cfg.robot}

    ckpts = Checkpoints(out / "checkpoints", max_to_keep=2)
    start, state = latest_train_state(ckpts, TRAIN_STATE_KIND, to_dict(cfg), trainer.state_dict(), out / "checkpoints")
    if state is not None:
        trainer.load_state_dict(state)
        if start < cfg.steps:
            console.print(f"resuming distill from step {start} of {cfg.steps}")
    history_path = out / "history.jsonl"
    history = truncate_history(history_path, start)

    eval_set = held_windows.sample(cfg.eval_windows, np.random.default_rng([cfg.seed, 1]))
    key = jax.random.key(cfg.seed)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    t0 = time.perf_counter()
    done = 0
    running: list[float] = []
    last_eval = ""
    def log_eval(step: int, train_loss: float | None) -> str:
        rep = heldout_report(trainer, eval_set, cfg.batch_size, cfg.r2_steps)
        row = {
            "step": step,
            "train_loss": train_loss,
            "heldout_latent": rep["latent_error_mean"],
            "heldout_reward_r2": rep[f"reward_r2_first_{cfg.r2_steps}"],
            "heldout_value_r2": rep[f"value_r2_first_{cfg.r2_steps}"],
            "heldout_bc_mse": rep["bc_action_mse"],
            "windows_per_s": done * cfg.batch_size / max(time.perf_counter() - t0, 1e-9),
        }
        history.append(row)
        append_history(history_path, row)
        return f"latent {row['heldout_latent']:.4f}  R² r {row['heldout_reward_r2']:.3f} v {row['heldout_value_r2']:.3f}"

    if start == 0 and not history:
        log_eval(0, None)  # the untrained model, the reference point of the learning curve
    t0 = time.perf_counter()
    with progress_bar(f"distill {cfg.robot}", cfg.steps, show_progress) as update:
        update(advance=start)
        for step in range(start + 1, end + 1):
            batch = train_windows.sample(cfg.batch_size, np.random.default_rng([cfg.seed, 0, step]))
            metrics = trainer.step(batch, jax.random.fold_in(key, step))
            running.append(metrics["loss"])
            done += 1
            if step % cfg.eval_every == 0 or step == end:
                losses = np.asarray(jax.device_get(running), np.float64)
                running = []
                if not np.all(np.isfinite(losses)):
                    raise TrainingDivergedError(
                        f"distill diverged (non-finite loss) before step {step}; the last good checkpoint "
                        f"(step {ckpts.latest_step() or 0}) is kept in {out}/checkpoints"
                    )
                last_eval = log_eval(step, float(losses.mean()))
            if step % cfg.checkpoint_every == 0 or step == end:
                ckpts.save(step, trainer.state_dict(), dict(meta_base, kind=TRAIN_STATE_KIND, step=step))
            update(advance=1, **({"held-out": last_eval} if last_eval else {}))
    seconds = time.perf_counter() - t0
    ckpts.close()
    reached = trainer.steps
    if reached < cfg.steps:
        return DistillResult(out, start, reached, None, seconds)

    final_set = held_windows.sample(cfg.final_eval_windows, np.random.default_rng([cfg.seed, 2]))
    report = heldout_report(trainer, final_set, cfg.batch_size, cfg.r2_steps)
    final_model = trainer.model()
    report.update(
        robot=cfg.robot,
        preset=cfg.preset,
        seed=cfg.seed,
        steps=cfg.steps,
        dynamics=m.dynamics,
        parameters=count_params(final_model),
        dynamics_parameters=count_params(final_model, DYNAMICS_FILTER),
        dataset=str(Path(data_path).resolve()),
        dataset_transitions=ds.n_transitions,
        train_seconds_this_invocation=round(seconds, 2),
        windows_per_second_this_invocation=round(done * cfg.batch_size / max(seconds, 1e-9), 1),
    )
    write_json(out / "metrics.json", report)
    plot_report(report, out / "horizon_error.png", f"{cfg.robot} world model ({cfg.preset}, {m.dynamics}): held-out")
    save_model(out, final_model, {
        "robot": cfg.robot,
        "source": "distill",
        "distill": to_dict(cfg),
        "dataset": str(Path(data_path).resolve()),
        "control_dt": float(ds.spec.control_dt),
        "heldout": {k: report[k] for k in (f"reward_r2_first_{cfg.r2_steps}", f"value_r2_first_{cfg.r2_steps}",
                                           "latent_error_mean")},
    })
    return DistillResult(out, start, reached, report, seconds)
