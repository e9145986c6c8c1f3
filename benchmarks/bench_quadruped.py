"""Throughput of the quadruped: MJX env control steps per second (flat terrain, random
actions) and the planner's latency per control step (context encoding + MPPI plan) with the
quadruped's default world model architecture (127-d observation with an 11x7 height scan,
12 actions, 3-d command), per MPPI preset. Prints tables and writes JSON.

    python benchmarks/bench_quadruped.py [--out benchmarks/results/quadruped.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
from bench_cartpole import bench_env, bench_planner, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/quadruped.json")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and calls")
    args = ap.parse_args()
    print("quadruped benchmarks on", jax.default_backend(), flush=True)
    env_rows = bench_env([64] if args.quick else [64, 256], steps=50 if args.quick else 100, robot="quadruped")
    planner_rows = bench_planner(["tiny", "default", "paper"], steps=100 if args.quick else 300, robot="quadruped")

    print()
    print(f"{'MJX env, batch':>16s} | {'control steps/s':>16s} | {'physics steps/s':>16s} | {'compile s':>9s}")
    print("-" * 68)
    for r in env_rows:
        print(f"{r['batch']:>16d} | {r['control_steps_per_s']:>16,.0f} | {r['physics_steps_per_s']:>16,.0f} | "
              f"{r['compile_s']:>9.1f}")
    print()
    print(f"{'planner':>12s} | {'preset':>8s} | {'horizon':>7s} | {'candidates':>10s} | {'iterations':>10s} | "
          f"{'p50 ms':>8s} | {'p99 ms':>8s}")
    print("-" * 82)
    for r in planner_rows:
        print(f"{r['dynamics']:>12s} | {r['preset']:>8s} | {r['horizon']:>7d} | {r['candidates']:>10d} | "
              f"{r['iterations']:>10d} | {r['p50_ms']:>8.1f} | {r['p99_ms']:>8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "env": env_rows, "planner": planner_rows}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
