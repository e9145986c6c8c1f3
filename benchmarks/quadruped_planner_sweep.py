"""Planner settings against world models (and gaps) on the quadruped's "real" robot: one row
per (gap, model, MPPI setting), plus the expert policy per gap with `--expert`. Reports
forward progress, falls and planner latency as mean ± std over episodes. Reproduces the
planner diagnostics of docs/quadruped.md ("Slippery slope").

    python benchmarks/quadruped_planner_sweep.py \\
        --model zero-shot=robots/quadruped/pretrained/model --model round3=runs/qa/finetuned_3 \\
        --planner default= --planner t8=temperature=8 --planner std03=init_std=0.3 \\
        [--base default] [--gap slippery-slope ...] [--expert DIR] [--episodes 5] [--out FILE]

A planner is NAME=key=value,key=value: fields of `MPPIConfig` replacing those of the
`--base` preset (`NAME=` is the base preset unchanged). Every row is cached in the output
JSON as it finishes, so an interrupted sweep continues; delete the file to start over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from simdist.config import write_json
from simdist.pipelines import deploy as dep
from simdist.planning import mppi


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    return name, value


def planner_config(base: mppi.MPPIConfig, spec: str) -> mppi.MPPIConfig:
    """`base` with the fields of `spec` ("key=value,key=value"; "" = unchanged) replaced."""
    fields = {f.name: f.type for f in dataclasses.fields(base)}
    over = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, raw = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown MPPI field '{key}'; fields: {', '.join(fields)}")
        over[key] = type(getattr(base, key))(raw)
    return dataclasses.replace(base, **over)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=_pair, action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--planner", type=_pair, action="append", default=[], help="NAME=key=v,... (repeatable)")
    ap.add_argument("--base", default="default", choices=sorted(mppi.PRESETS))
    ap.add_argument("--gap", action="append", default=[], help="gap name or key=value,... (repeatable)")
    ap.add_argument("--expert", type=Path, help="also run this expert policy on every gap")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--episode-length", type=int, default=500, help="control steps (50 Hz)")
    ap.add_argument("--seed", type=int, default=1000, help="episode seed (quadruped_adaptation uses 1000)")
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_planner_sweep.json"))
    args = ap.parse_args()
    gaps = args.gap or ["slippery-slope"]
    planners = args.planner or [("default", "")]
    base = mppi.PRESETS[args.base]
    configs = {name: planner_config(base, spec) for name, spec in planners}  # validate all first
    if not args.model and args.expert is None:
        raise SystemExit("give at least one --model NAME=DIR or --expert DIR")

    rows = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def run(key: str, **kw) -> None:
        if key in rows:
            print(format_row(key, rows[key]), flush=True)
            return
        t = time.perf_counter()
        res = dep.deploy(dep.DeployConfig(robot="quadruped", episodes=args.episodes, gap=kw.pop("gap"),
                                          episode_length=args.episode_length, seed=args.seed, **kw.pop("cfg", {})),
                         show_progress=False, **kw)
        m = res.metrics["forward_progress_m"]
        rows[key] = {"progress_m": [m["mean"], m["std"]], "falls": res.safety_stops, "episodes": args.episodes,
                     "latency_ms": {k: res.latency_ms[k] for k in ("p50", "p99")},
                     "wall_s": time.perf_counter() - t}
        write_json(args.out, rows)
        print(format_row(key, rows[key]), flush=True)

    for gap in gaps:
        if args.expert is not None:
            run(f"{gap} | expert", gap=gap, expert_dir=args.expert)
        for pname, cfg in configs.items():
            preset = f"sweep:{pname}"
            mppi.PRESETS[preset] = cfg  # deploy takes the planner by preset name
            for mname, mdir in args.model:
                run(f"{gap} | {mname} | {pname}", gap=gap, model_dir=mdir, cfg={"mppi": preset})
    print(f"\nwrote {args.out}")


def format_row(key: str, r: dict) -> str:
    pm, ps = r["progress_m"]
    lat = r["latency_ms"]
    return (f"{key:60s} {pm:+6.2f} ± {ps:4.2f} m  falls {r['falls']}/{r['episodes']}"
            f"  p50/p99 {lat['p50']:6.1f}/{lat['p99']:6.1f} ms")


if __name__ == "__main__":
    main()
