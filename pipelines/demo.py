"""The end-to-end demo on one robot: expert, dataset, world model, zero-shot deploy on the
"real" robot (recording), finetuning in both modes on growing amounts of real data, and
deploy again. Prints one table and writes a PNG of real-robot return against real data.

Every stage writes into its own folder under OUT and is skipped when already complete, so
an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simdist.config import write_json
from simdist.paths import make_output_dir
from simdist.runlog import save_figure
from simdist.progress import console


@dataclass(frozen=True)
class DemoConfig:
    robot: str = "cartpole"
    preset: str = "default"
    seed: int = 0
    gap: str = "default"
    eval_episodes: int = 10
    record_episodes: int = 20  # zero-shot episodes recorded as real data
    data_amounts: tuple[int, ...] = (1500, 3000, 4500)  # real transitions used by finetuning (at most)
    modes: tuple[str, ...] = ("dynamics", "residual")
    mppi: str = "default"


def _stats(returns: list[float | None]) -> tuple[float, float]:
    r = np.asarray([x for x in returns if x is not None], np.float64)
    return (float(r.mean()), float(r.std())) if len(r) else (float("nan"), float("nan"))


def run_demo(cfg: DemoConfig, out: Path, *, show_progress: bool = True) -> dict[str, Any]:
    from simdist.data.dataset import Dataset
    from simdist.pipelines import deploy as dep
    from simdist.pipelines import distill as dst
    from simdist.pipelines import finetune as fin
    from simdist.pipelines import generate_data as gen
    from simdist.pipelines import train_expert as tex

    out = Path(out)
    make_output_dir(out, "--out")
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str):
        console.print(f"[bold]== {name}[/bold]")
        return time.perf_counter()

    # 1-3: simulation stages (each resumes or skips when done).
    t = stage("Stage 1: train-expert")
    expert_dir = out / "expert"
    tex.train_expert(tex.make_config(cfg.robot, cfg.preset, cfg.seed), expert_dir, show_progress=show_progress)
    timings["train-expert"] = time.perf_counter() - t

    t = stage("Stage 2: generate-data")
    data_dir = out / "data"
    gen.generate_data(gen.make_config(cfg.robot, cfg.preset, cfg.seed), expert_dir, data_dir, show_progress=show_progress)
    timings["generate-data"] = time.perf_counter() - t

    t = stage("Stage 3: distill")
    model_dir = out / "model"
    if not (model_dir / "model.json").exists():
        dst.distill(dst.make_config(cfg.robot, cfg.preset, cfg.seed), data_dir, model_dir, show_progress=show_progress)
    timings["distill"] = time.perf_counter() - t

    results_path = out / "results.json"
    rows: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}

    def evaluate(key: str, label: str, *, gap: str | None, model: Path | None = None, expert: Path | None = None,
                 record: Path | None = None, episodes: int | None = None, real_transitions: int = 0) -> None:
        if key in rows:
            return
        dcfg = dep.DeployConfig(robot=cfg.robot, episodes=episodes or cfg.eval_episodes, mppi=cfg.mppi, gap=gap,
                                seed=cfg.seed + 1000)
        res = dep.deploy(dcfg, model_dir=model, expert_dir=expert, record=record, show_progress=show_progress)
        mean, std = _stats(res.returns)
        rows[key] = {"label": label, "gap": gap or "none", "mean": mean, "std": std, "episodes": len(res.returns),
                     "returns": res.returns, "real_transitions": real_transitions,
                     "safety_stops": sum(1 for e in res.episodes if e.safety_stop),
                     "latency_p50_ms": res.latency_ms.get("p50") if res.latency_ms else None,
                     "latency_p99_ms": res.latency_ms.get("p99") if res.latency_ms else None}
        write_json(results_path, rows)

    t = stage("Deploy: expert and planner, in sim and zero-shot on the real robot")
    if "expert_mjx" not in rows:
        m = json.loads((expert_dir / "metrics.json").read_text())
        rows["expert_mjx"] = {"label": "expert policy, training sim (MJX, randomised)", "gap": "-",
                              "mean": m["expert_return_mean"], "std": m["expert_return_std"],
                              "episodes": m["eval_episodes"], "returns": None, "real_transitions": 0,
                              "safety_stops": None}
    evaluate("expert_sim", "expert policy, sim-real without gap", gap="none", expert=expert_dir)
    evaluate("expert_real", "expert policy, real robot", gap=cfg.gap, expert=expert_dir)
    evaluate("planner_sim", "planner, sim-real without gap", gap="none", model=model_dir)
    real_data = out / "real_data"
    if "planner_zero_shot" not in rows and real_data.exists():
        import shutil

        shutil.rmtree(real_data)  # a recording cut short: record again from scratch
    evaluate("planner_zero_shot", "planner zero-shot, real robot (recording)", gap=cfg.gap, model=model_dir,
             record=real_data, episodes=cfg.record_episodes)
    timings["deploy-zero-shot"] = time.perf_counter() - t

    t = stage("Stage 4: finetune on real data, then deploy again")
    recorded = Dataset.open(real_data).n_transitions
    amounts = [a for a in cfg.data_amounts if a <= recorded] or [recorded]
    for mode in cfg.modes:
        for amount in amounts:
            key = f"finetune_{mode}_{amount}"
            if key in rows:
                continue
            fdir = out / f"finetune-{mode}-{amount}"
            if not (fdir / "model.json").exists():
                fcfg = fin.make_config(cfg.preset, cfg.seed, mode, {"max_transitions": amount}, robot=cfg.robot)
                fin.finetune(fcfg, model_dir, real_data, fdir, show_progress=show_progress)
            used = json.loads((fdir / "metrics.json").read_text())["real_data"]["transitions"]
            evaluate(key, f"planner after finetuning ({mode}), real robot", gap=cfg.gap, model=fdir,
                     real_transitions=used)
    timings["finetune+deploy"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    summary = {"config": dataclasses.asdict(cfg), "rows": rows, "timings_s_this_invocation": timings,
               "recorded_transitions": recorded}
    write_json(out / "summary.json", summary)
    plot_data_curve(rows, cfg, out / "real_return_vs_data.png")
    print(format_table(rows, cfg, recorded), flush=True)
    return summary


def format_table(rows: dict[str, Any], cfg: DemoConfig, recorded: int, control_dt: float = 0.02) -> str:
    lines = [f"{'':50s} {'return':>17s}  {'safety stops':>12s}  {'real data used':>22s}", "-" * 107]
    order = ["expert_mjx", "expert_sim", "expert_real", "planner_sim", "planner_zero_shot"] + [
        k for k in rows if k.startswith("finetune_")
    ]
    for k in order:
        if k not in rows:
            continue
        r = rows[k]
        n = r["real_transitions"]
        data = f"{n:,} steps ({n * control_dt / 60:.1f} min)" if n else "-"
        stops = "-" if r.get("safety_stops") is None else f"{r['safety_stops']}/{r['episodes']}"
        lines.append(f"{r['label']:50s} {r['mean']:8.1f} ± {r['std']:6.1f}  {stops:>12s}  {data:>22s}")
    lines.append(f"(mean ± std over {cfg.eval_episodes} episodes of 300 steps, max return 300; the zero-shot row "
                 f"records {cfg.record_episodes} episodes;")
    lines.append(f" real robot = sim-real with gap '{cfg.gap}'; {recorded:,} real steps recorded zero-shot)")
    lines.append(f"Does finetuning help on gaps nobody chose? `simdist gaps run --robot {cfg.robot} --model MODEL "
                 "--out DIR` runs the random-gap battery (docs/gap-battery.md).")
    return "\n".join(lines)


def plot_data_curve(rows: dict[str, Any], cfg: DemoConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    zs = rows.get("planner_zero_shot")
    for mode, marker in (("dynamics", "o"), ("residual", "s")):
        pts = sorted((r["real_transitions"], r["mean"], r["std"]) for k, r in rows.items()
                     if k.startswith(f"finetune_{mode}_"))
        if zs:
            pts = [(0, zs["mean"], zs["std"])] + pts
        if pts:
            x, y, e = map(np.asarray, zip(*pts))
            ax.errorbar(x * 0.02 / 60, y, yerr=e, marker=marker, capsize=3, label=f"finetune: {mode}")
    for key, ls, label in (("expert_real", ":", "expert policy, real"), ("planner_sim", "--", "planner, sim")):
        if key in rows:
            ax.axhline(rows[key]["mean"], ls=ls, color="grey", label=label)
    ax.set_xlabel("real data used (minutes at 50 Hz)")
    ax.set_ylabel(f"real-robot return (mean ± std, {cfg.eval_episodes} episodes)")
    ax.set_title(f"{cfg.robot}, gap '{cfg.gap}': return against real data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
