"""Velocity tracking of a quadruped expert in MJX: forward-velocity mean absolute error, falls
and distance on a fixed forward command, per snapshot. Reproduces the expert table of
docs/results/quadruped.md. The library version is `simdist eval-expert` (`simdist.rl.evaluate`).

    python -m experiments.quadruped_tracking RUN_DIR [--episodes 10] [--vx 0.5] [--last 3] [--seed 7]
        [--flat]      (--flat: ground without the training's randomised incline)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simdist.rl.evaluate import evaluate_expert


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--vx", type=float, default=0.5)
    ap.add_argument("--last", type=int, default=3, help="evaluate the last N snapshots")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--flat", action="store_true", help="flat ground (slope_range_deg=0)")
    args = ap.parse_args()
    rows = evaluate_expert(args.run_dir, "quadruped", episodes=args.episodes, command=(args.vx, 0.0, 0.0),
                           snapshots=args.last, seed=args.seed,
                           env_overrides={"slope_range_deg": 0.0} if args.flat else None)  # fmt: skip
    print(f"{'snapshot':>9s} | {'vx MAE m/s':>10s} | {'falls':>6s} | {'distance m':>10s}")
    for r in rows:
        print(f"{r['iteration']:>9d} | {r['vx_mae']:>10.3f} | {r['falls']:>3d}/{args.episodes:<2d} | {r['distance_mean']:>10.2f}")


if __name__ == "__main__":
    main()
