"""The quadruped's sim-to-real experiment: the expert and the MPPI planner in sim, then the
planner zero-shot on a "real" robot with a reality gap (recording real data), finetuned on
that data, and deployed again. Reports forward progress (m), velocity tracking error, falls,
return and planner latency, as mean ± std over episodes. Reproduces the tables of
docs/results/quadruped.md and docs/notes/quadruped-slope-investigation.md.

    python -m experiments.quadruped_adaptation [--model DIR] [--expert DIR] [--gap slippery-slope]
        [--episodes 10] [--record-episodes 20] [--episode-length 500] [--rounds 3] [--residual]
        [--out DIR]

Rounds: the zero-shot planner records `--record-episodes`; each round finetunes the dynamics
of the sim-distilled model on all the real data so far and deploys the result for
`--episodes`, which are recorded for the next round (the last round records nothing). With
the defaults the final round has used at most (20 + 10 + 10) x 10 s = 6.7 min of real data.

Defaults: the shipped model and expert (robots/quadruped/pretrained). Every row is cached in
OUT/results.json, so an interrupted run continues; delete the file to start over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from simdist.config import write_json
from simdist.pipelines import deploy as dep
from simdist.pipelines import finetune as fin
from simdist.robots import get_robot

METRICS = ("forward_progress_m", "vx_mae", "yaw_rate_mae")


def main() -> None:
    robot = get_robot("quadruped")
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=robot.pretrained("model"))
    ap.add_argument("--expert", type=Path, default=robot.pretrained("expert"))
    ap.add_argument("--gap", default="slippery-slope")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--record-episodes", type=int, default=20)
    ap.add_argument("--episode-length", type=int, default=500, help="control steps (50 Hz)")
    ap.add_argument("--finetune-preset", default="default")
    ap.add_argument("--mppi", default="default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_adaptation"))
    ap.add_argument("--skip-sim", action="store_true", help="only the gap rows")
    ap.add_argument("--rounds", type=int, default=3, help="finetune/deploy rounds; each deploy records more")
    ap.add_argument("--residual", action="store_true", help="also finetune a ReDRAW residual on all the data")
    args = ap.parse_args()
    if args.model is None or args.expert is None:
        raise SystemExit("no model/expert given and none shipped")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else {}

    def run(key, label, gap, *, model=None, expert=None, record=None, episodes=None, real_steps=0):
        if key in rows:
            return
        t = time.perf_counter()
        cfg = dep.DeployConfig(robot="quadruped", episodes=episodes or args.episodes, mppi=args.mppi, gap=gap,
                               episode_length=args.episode_length, seed=args.seed + 1000)
        res = dep.deploy(cfg, model_dir=model, expert_dir=expert, record=record, show_progress=True)
        rets = np.array([r for r in res.returns if r is not None])
        rows[key] = {
            "label": label, "gap": gap, "episodes": len(res.episodes), "real_steps": real_steps,
            "return": [float(rets.mean()), float(rets.std())],
            "falls": res.safety_stops,
            **{k: [v["mean"], v["std"]] for k, v in res.metrics.items() if k in METRICS},
            "progress_per_episode": [e.metrics.get("forward_progress_m") for e in res.episodes],
            "latency_ms": {k: res.latency_ms[k] for k in ("p50", "p99")},
            "wall_s": time.perf_counter() - t,
        }
        write_json(results_path, rows)
        print(format_row(rows[key]), flush=True)

    if not args.skip_sim:
        run("expert_sim", "expert, sim (no gap)", "none", expert=args.expert)
        run("planner_sim", "planner, sim (no gap)", "none", model=args.model)
    run("expert_gap", "expert, real robot", args.gap, expert=args.expert)
    real = out / "real_data"
    if "planner_zero_shot" not in rows and real.exists():
        shutil.rmtree(real)  # a recording cut short: record again
    run("planner_zero_shot", "planner zero-shot, real robot (recording)", args.gap, model=args.model,
        record=real, episodes=args.record_episodes)
    # Rounds of adaptation, as on a real robot: finetune the dynamics on all the real data
    # so far (always from the sim-distilled model), deploy the finetuned planner, and record
    # its episodes as more real data for the next round. The evaluation of round k never
    # includes its own episodes in its training data.
    for k in range(1, args.rounds + 1):
        ft = out / f"finetuned_{k}"
        if not (ft / "model.json").exists():
            fcfg = fin.make_config(args.finetune_preset, args.seed, "dynamics", robot=robot)
            fin.finetune(fcfg, args.model, real, ft, show_progress=True)
        used = json.loads((ft / "metrics.json").read_text())["real_data"]["transitions"]
        last = k == args.rounds
        key = f"planner_finetuned_{k}"
        if key not in rows and not last:
            _restore_or_back_up(real, out / f"real_data_before_round_{k}")
        run(key, f"planner finetuned (dynamics), round {k}", args.gap, model=ft, real_steps=used,
            record=None if last else real)
    if args.residual:
        ft = out / "residual"
        if not (ft / "model.json").exists():
            fin.finetune(fin.make_config(args.finetune_preset, args.seed, "residual", robot=robot), args.model, real, ft,
                         show_progress=True)
        used = json.loads((ft / "metrics.json").read_text())["real_data"]["transitions"]
        run("planner_residual", "planner finetuned (ReDRAW residual)", args.gap, model=ft, real_steps=used)

    print()
    print(f"gap '{args.gap}', episodes of {args.episode_length} steps ({args.episode_length * 0.02:.0f} s)")
    print(f"{'':44s} {'progress m':>13s} {'vx MAE m/s':>13s} {'falls':>6s} {'return':>13s} {'p50/p99 ms':>11s}"
          f" {'real data':>10s}")
    for r in rows.values():
        print(format_row(r))
    write_json(results_path, rows)
    print(f"\nwrote {results_path}")


def _restore_or_back_up(real: Path, backup: Path) -> None:
    """Before a round records into `real`: keep a copy of it, or, when the copy exists (the
    round was cut short), put it back so the round's partial episodes go."""
    if backup.exists():
        shutil.rmtree(real)
        shutil.copytree(backup, real)
        return
    tmp = backup.with_name(backup.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(real, tmp)
    tmp.rename(backup)


def format_row(r) -> str:
    pm, ps = r.get("forward_progress_m", [np.nan, np.nan])
    vm, vs = r.get("vx_mae", [np.nan, np.nan])
    lat = r["latency_ms"]
    data = f"{r['real_steps'] * 0.02 / 60:.1f} min" if r["real_steps"] else "-"
    return (f"{r['label']:44s} {pm:6.2f} ± {ps:4.2f} {vm:6.3f} ± {vs:4.3f} {r['falls']:>3d}/{r['episodes']:<2d}"
            f" {r['return'][0]:6.2f} ± {r['return'][1]:4.2f} {lat['p50']:5.1f}/{lat['p99']:<5.1f} {data:>10s}")


if __name__ == "__main__":
    main()
