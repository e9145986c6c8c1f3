"""The random-gap battery: does finetuning on real data help, on gaps nobody chose?

For a distilled model and a robot, it draws N gaps from a seed (simdist.backends.battery) and,
for each: deploys the planner zero-shot while recording (`real_seconds` of real data: whole
episodes, which are also the zero-shot evaluation), finetunes on that data, and deploys the
finetuned planner for `episodes` episodes. Once, it deploys the planner without a gap: the
reference return. Then it reports every gap and a summary:

- a gap is **improved** (or **worsened**) when finetuned minus zero-shot exceeds `z` standard
  errors of that difference (z = 2), else **unchanged**;
- the relative gain of a gap is (finetuned - zero-shot) / |zero-shot|; the summary gives its
  mean and the worst (the most negative);
- safety stops before and after, and "new stops": stops after finetuning on gaps whose
  zero-shot episodes had none;
- the issue's checks: how many gaps where zero-shot falls below 90 % of the no-gap return
  finetuning improves, how many it worsens by more than 5 %, how many reach 90 % of no-gap.

Every gap's results go into OUT/battery.json as soon as they exist, so an interrupted battery
continues where it stopped (a recording cut short is recorded again).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simdist.backends.battery import gap_spec, robot_battery, sample_gaps
from simdist.config import write_json
from simdist.errors import ConfigError
from simdist.paths import make_output_dir
from simdist.progress import console
from simdist.runlog import save_figure


@dataclass(frozen=True)
class BatteryConfig:
    robot: str = "cartpole"
    n: int = 10
    seed: int = 0  # the gaps' seed
    real_seconds: float = 60.0  # real data recorded zero-shot on each gap
    episodes: int = 10  # evaluation episodes: no gap, and finetuned on each gap
    mode: str = "dynamics"  # finetune mode
    finetune_preset: str = "default"
    finetune_overrides: tuple[tuple[str, Any], ...] = ()  # FinetuneConfig fields, e.g. (("steps", 500),)
    mppi: str = "default"
    episode_length: int | None = None  # None: the robot's
    deploy_seed: int = 1000
    z: float = 2.0  # "beyond noise": more than z standard errors of the difference

    def __post_init__(self):
        if self.n < 1 or self.episodes < 1 or self.real_seconds <= 0:
            raise ConfigError("battery: n and episodes must be >= 1 and real_seconds > 0")


def _stats(res) -> dict[str, Any]:
    r = np.asarray([x for x in res.returns if x is not None], np.float64)
    se = float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else float("nan")
    return {"mean": float(r.mean()), "se": se, "episodes": int(len(r)), "returns": [float(x) for x in r],
            "safety_stops": int(res.safety_stops), "steps": int(sum(res.steps))}


def run_battery(cfg: BatteryConfig, model_dir: Path, out: Path, *, show_progress: bool = True) -> dict[str, Any]:
    from simdist.data.dataset import Dataset
    from simdist.pipelines import deploy as dep
    from simdist.pipelines import finetune as fin
    from simdist.robot import get_robot

    from simdist.models.io import read_model_meta

    read_model_meta(Path(model_dir), cfg.robot)  # a missing or other robot's model: one line, nothing written
    robot = get_robot(cfg.robot)
    env_cfg = robot.env_config_cls()
    length = cfg.episode_length or int(env_cfg.episode_length)
    real_steps = int(round(cfg.real_seconds / float(env_cfg.ctrl_dt)))
    record_episodes = max(1, math.ceil(real_steps / length))
    gaps = sample_gaps(robot_battery(robot), cfg.n, cfg.seed)
    out = Path(out)
    state_path = out / "battery.json"
    config = {**dataclasses.asdict(cfg), "model": str(model_dir)}
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("config") != json.loads(json.dumps(config)):
            raise ConfigError(f"{state_path} holds a battery with another configuration; use a new --out")
    else:
        make_output_dir(out, "--out")
        state = {"config": config, "gaps": gaps, "nogap": None, "results": {}}
    t0 = time.perf_counter()

    def deploy(gap: str, episodes: int, model: Path, record: Path | None = None):
        dcfg = dep.DeployConfig(robot=cfg.robot, episodes=episodes, mppi=cfg.mppi, gap=gap, seed=cfg.deploy_seed,
                                episode_length=cfg.episode_length)
        return _stats(dep.deploy(dcfg, model_dir=model, record=record, show_progress=show_progress))

    if state["nogap"] is None:
        console.print("[bold]== planner without a gap (the reference)[/bold]")
        state["nogap"] = deploy("none", cfg.episodes, Path(model_dir))
        write_json(state_path, state)
    for i, gap in enumerate(gaps):
        key = str(i)
        if key in state["results"]:
            continue
        spec = gap_spec(gap)
        console.print(f"[bold]== gap {i + 1}/{len(gaps)}: {spec}[/bold]")
        gdir = out / f"gap-{i:02d}"
        real = gdir / "real_data"
        if real.exists():
            shutil.rmtree(real)  # a recording cut short: record again
        gdir.mkdir(parents=True, exist_ok=True)
        zero = deploy(spec, record_episodes, Path(model_dir), record=real)
        fdir = gdir / "finetuned"
        if fdir.exists():
            shutil.rmtree(fdir)
        overrides = {"max_transitions": real_steps, **dict(cfg.finetune_overrides)}
        fcfg = fin.make_config(cfg.finetune_preset, 0, cfg.mode, overrides, robot=cfg.robot)
        fin.finetune(fcfg, Path(model_dir), real, fdir, show_progress=show_progress)
        used = json.loads((fdir / "metrics.json").read_text())["real_data"]["transitions"]
        tuned = deploy(spec, cfg.episodes, fdir)
        state["results"][key] = {"gap": gap, "zero_shot": zero, "finetuned": tuned, "real_transitions": used,
                                 "recorded_transitions": Dataset.open(real).n_transitions}
        write_json(state_path, state)
    state["summary"] = summarize(state, cfg.z)
    state["seconds_this_invocation"] = time.perf_counter() - t0
    write_json(state_path, state)
    plot_battery(state, out / "battery.png")
    print(format_battery(state), flush=True)
    return state


def verdict(zero: dict, tuned: dict, z: float = 2.0) -> str:
    """'improved', 'worsened' or 'unchanged' (the difference within z standard errors)."""
    se = math.sqrt(_sq(zero["se"]) + _sq(tuned["se"]))
    d = tuned["mean"] - zero["mean"]
    if d > z * se:
        return "improved"
    if d < -z * se:
        return "worsened"
    return "unchanged"


def _sq(x: float) -> float:
    return 0.0 if x is None or not math.isfinite(x) else x * x


def summarize(state: dict, z: float = 2.0) -> dict[str, Any]:
    rows = [state["results"][k] for k in sorted(state["results"], key=int)]
    nogap = state["nogap"]["mean"]
    verdicts = [verdict(r["zero_shot"], r["finetuned"], z) for r in rows]
    rel = [(r["finetuned"]["mean"] - r["zero_shot"]["mean"]) / max(abs(r["zero_shot"]["mean"]), 1e-9) for r in rows]
    needy = [i for i, r in enumerate(rows) if r["zero_shot"]["mean"] < 0.9 * nogap]
    return {
        "gaps": len(rows),
        "improved": verdicts.count("improved"),
        "unchanged": verdicts.count("unchanged"),
        "worsened": verdicts.count("worsened"),
        "verdicts": verdicts,
        "mean_relative_gain": float(np.mean(rel)) if rel else float("nan"),
        "worst_relative_change": float(np.min(rel)) if rel else float("nan"),
        "safety_stops_zero_shot": sum(r["zero_shot"]["safety_stops"] for r in rows),
        "safety_stops_finetuned": sum(r["finetuned"]["safety_stops"] for r in rows),
        "new_safety_stops": sum(r["finetuned"]["safety_stops"] for r in rows if r["zero_shot"]["safety_stops"] == 0),
        "nogap_return": nogap,
        "below_90pct_zero_shot": len(needy),
        "below_90pct_improved": sum(verdicts[i] == "improved" for i in needy),
        "worsened_over_5pct": sum(v == "worsened" and g < -0.05 for v, g in zip(verdicts, rel)),
        "finetuned_at_90pct_of_nogap": sum(r["finetuned"]["mean"] >= 0.9 * nogap for r in rows),
    }


def format_battery(state: dict) -> str:
    s = state.get("summary") or summarize(state)
    cfg = state["config"]
    rows = [state["results"][k] for k in sorted(state["results"], key=int)]
    ng = state["nogap"]
    lines = [f"random-gap battery: robot {cfg['robot']}, seed {cfg['seed']}, {s['gaps']} gaps, "
             f"{cfg['real_seconds']:g} s of real data each, finetune {cfg['mode']}",
             f"planner without a gap: {ng['mean']:.1f} ± {ng['se']:.1f} ({ng['safety_stops']}/{ng['episodes']} stops)",
             f"{'#':>2s}  {'zero-shot':>15s} {'stops':>5s}  {'finetuned':>15s} {'stops':>5s}  {'change':>7s}  "
             f"{'verdict':9s}  gap", "-" * 110]
    for i, (r, v) in enumerate(zip(rows, s["verdicts"])):
        a, b = r["zero_shot"], r["finetuned"]
        change = (b["mean"] - a["mean"]) / max(abs(a["mean"]), 1e-9)
        lines.append(f"{i:2d}  {a['mean']:7.1f} ± {a['se']:5.1f} {a['safety_stops']:>2d}/{a['episodes']:<2d}  "
                     f"{b['mean']:7.1f} ± {b['se']:5.1f} {b['safety_stops']:>2d}/{b['episodes']:<2d}  "
                     f"{change:+6.0%}  {v:9s}  {gap_spec(r['gap'])}")
    lines.append(f"(mean ± standard error; a change beyond {state['config']['z']:g} standard errors is improved or worsened)")
    lines.append(f"improved {s['improved']}, unchanged {s['unchanged']}, worsened {s['worsened']}; "
                 f"mean relative gain {s['mean_relative_gain']:+.0%}, worst {s['worst_relative_change']:+.0%}; "
                 f"safety stops {s['safety_stops_zero_shot']} zero-shot, {s['safety_stops_finetuned']} finetuned "
                 f"({s['new_safety_stops']} on gaps with none before)")
    lines.append(f"zero-shot below 90 % of no-gap on {s['below_90pct_zero_shot']} gaps, improved on "
                 f"{s['below_90pct_improved']} of them; worsened by over 5 % on {s['worsened_over_5pct']}; "
                 f"finetuned at >= 90 % of no-gap on {s['finetuned_at_90pct_of_nogap']}/{s['gaps']}")
    return "\n".join(lines)


def plot_battery(state: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [state["results"][k] for k in sorted(state["results"], key=int)]
    if not rows:
        return
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for off, key, label in ((-0.2, "zero_shot", "zero-shot"), (0.2, "finetuned", "finetuned")):
        ax.bar(x + off, [r[key]["mean"] for r in rows], 0.4, yerr=[r[key]["se"] for r in rows], capsize=2, label=label)
    ax.axhline(state["nogap"]["mean"], ls="--", color="grey", label="planner, no gap")
    ax.axhline(0.9 * state["nogap"]["mean"], ls=":", color="grey", label="90 % of no gap")
    ax.set_xticks(x)
    ax.set_xlabel("gap")
    ax.set_ylabel("real-robot return (mean ± s.e.)")
    ax.set_title(f"{state['config']['robot']}: random-gap battery, seed {state['config']['seed']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
