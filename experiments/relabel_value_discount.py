"""An experiment, not a pipeline stage: copy a Stage 2 dataset with its value label replaced by a
shorter-discount Monte Carlo return, to distill a world model whose value head sees speed.
Used for the "speed-aware value" rows of docs/notes/quadruped-slope-investigation.md (2026-12-01).

    python -m experiments.relabel_value_discount --data DATA --out NEW_DATA --discount 0.95

The label keeps the dataset's timing (value[i] belongs to s_{i+1}):
value[i] = Σ_k g^k reward[i+1+k] within the episode. After a failure the tail is 0. After a
time-limit truncation it bootstraps with the stored expert value of the last step, rescaled
from the expert's discount 0.99 to g by (1 - 0.99) / (1 - g). The result is the return of the
policy that collected the data (expert or sub-optimal, with noise bursts), not the expert's
value. Plan with it using the same discount (`simdist deploy --mppi-set discount=0.95`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from simdist.data.dataset import Dataset

EXPERT_DISCOUNT = 0.99  # the discount of the Stage 1 critic whose values Stage 2 stores


def discounted_labels(reward: np.ndarray, old_value: np.ndarray, terminated: bool, g: float) -> np.ndarray:
    """value[j] = G(s_{j+1}) for one episode's rows (see the module docstring)."""
    acc = 0.0 if terminated else float(old_value[-1]) * (1 - EXPERT_DISCOUNT) / (1 - g)  # G(s_end)
    out = np.empty(len(reward), np.float64)
    for j in range(len(reward) - 1, -1, -1):
        out[j] = acc
        acc = float(reward[j]) + g * acc
    return out.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--discount", type=float, default=0.95)
    ap.add_argument("--batch-episodes", type=int, default=200)
    args = ap.parse_args()
    if not 0.0 < args.discount < 1.0:
        raise SystemExit(f"error: --discount must be in (0, 1), got {args.discount}")
    src = Dataset.open(args.data, require_labels=True)
    extra = dict(src.extra) | {"value_relabel": {"discount": args.discount, "from": str(args.data)}}
    dst = Dataset.create(args.out, src.spec, extra=extra)
    eps = src.episodes()
    try:
        for b in range(0, len(eps), args.batch_episodes):
            part = eps[b:b + args.batch_episodes]
            start, stop = int(part[0, 0]), int(part[-1, 0] + part[-1, 1])
            steps = {name: src.read(name, start, stop) for name in src.spec.fields()}
            for s, n, _, term in part:
                i = int(s) - start
                steps["value"][i:i + n] = discounted_labels(steps["reward"][i:i + n], steps["value"][i:i + n],
                                                            bool(term), args.discount)
            dst.append_episodes(steps, part[:, 1], part[:, 2], part[:, 3])
            print(f"{b + len(part)}/{len(eps)} episodes", flush=True)
    finally:
        dst.close()
        src.close()
    out = Dataset.open(args.out)
    mean, std = out.stats()["value"]
    print(f"wrote {args.out}: {out.n_transitions:,} transitions; value label mean {float(mean):.3f}, std {float(std):.3f}")


if __name__ == "__main__":
    main()
