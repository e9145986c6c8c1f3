"""Does the world model's planning objective see forward speed? Encodes every step of a real-data
dataset with a world model and bins the upright steps by measured base vx: the mean of the
value head v̂(z_t) and of the reward head r̂(z_t, a_t, z_{t+1}) per bin, and their correlation
with vx. Reproduces the value table of docs/notes/quadruped-slope-investigation.md (2026-12-01).

    python -m experiments.quadruped_value_vs_speed --model robots/quadruped/pretrained/model \\
        --real-data REAL_DATA [--out runs/quadruped_value_vs_speed.json]

The reward and value use the command recorded with each step (the deploy command).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from simdist.config import write_json
from simdist.data.dataset import Dataset
from simdist.models.io import load_model

BINS = (-np.inf, -0.1, 0.0, 0.1, 0.2, 0.3, 0.5, np.inf)
UPRIGHT_GZ = -0.95  # body-frame gravity z below this: the trunk tilts less than about 18 degrees


def _batched(fn, *arrays, size: int = 4096) -> np.ndarray:
    n = len(arrays[0])
    return np.concatenate([np.asarray(fn(*(jnp.asarray(a[i:i + size]) for a in arrays)))
                           for i in range(0, n, size)])


def measure(model_dir: Path, data_dir: Path) -> dict:
    model, _ = load_model(model_dir, robot="quadruped")
    ds = Dataset.open(data_dir, robot="quadruped")
    try:
        names = list(ds.attrs["obs_names"])
        obs, act, cmd = ds.read("obs"), ds.read("action"), ds.read("command")
        episodes = ds.episodes()
    finally:
        ds.close()
    i_vx, i_gz = names.index("base_vx"), names.index("gravity_z")
    z = _batched(model.encode, obs)
    # Steps with a successor in the same episode: r̂(z_t, a_t, z_{t+1}) needs z_{t+1}.
    idx = np.concatenate([np.arange(s, s + n - 1) for s, n, _, _ in episodes if n > 1])
    r = _batched(model.reward, z[idx], act[idx], z[idx + 1], cmd[idx])
    v = _batched(model.value, z[idx], cmd[idx])
    vx, up = obs[idx, i_vx], obs[idx, i_gz] < UPRIGHT_GZ
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = up & (vx >= lo) & (vx < hi)
        if sel.any():
            rows.append({"vx_low": float(lo), "vx_high": float(hi), "steps": int(sel.sum()),
                         "value": float(v[sel].mean()), "value_std": float(v[sel].std()),
                         "reward": float(r[sel].mean())})
    return {
        "model": str(model_dir), "real_data": str(data_dir), "steps": int(len(idx)), "upright": int(up.sum()),
        "corr_value_vx": float(np.corrcoef(v[up], vx[up])[0, 1]),
        "corr_reward_vx": float(np.corrcoef(r[up], vx[up])[0, 1]),
        "bins": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("robots/quadruped/pretrained/model"))
    ap.add_argument("--real-data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_value_vs_speed.json"))
    args = ap.parse_args()
    res = measure(args.model, args.real_data)
    print(f"{res['upright']:,} upright steps of {res['steps']:,} ({args.real_data}), model {args.model}")
    print(f"{'measured base vx (m/s)':>24} | {'steps':>7} | {'value head':>10} | {'reward head':>11}")
    for b in res["bins"]:
        print(f"{b['vx_low']:>+10.1f} to {b['vx_high']:<+10.1f} | {b['steps']:>7,} | {b['value']:>10.3f} | {b['reward']:>11.4f}")
    print(f"correlation with vx: value {res['corr_value_vx']:+.3f}, reward {res['corr_reward_vx']:+.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
