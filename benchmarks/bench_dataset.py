"""Cost of the dataset chunk checksums: write and read throughput of a Stage 2 dataset of
cartpole-shaped rows (obs 5, action 1, reward, value, expert, noisy), with the crc32c codec
(schema 2, the default) and without it, in alternating repetitions. Prints a table and writes
JSON.

    python benchmarks/bench_dataset.py [--transitions 1000000] [--repeats 3] [--out benchmarks/results/dataset.json]

write: ``Dataset.create`` + ``append_episodes`` in batches of 64 episodes of 500 steps (as
generate-data appends) + close. read: every field in full with ``Dataset.read`` (the files are
in the page cache, so this is decoding + checksum time, not disk time). verify: ``Dataset.verify``,
what ``simdist data info`` does by default.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from simdist.atomic import write_json
from simdist.data import Dataset, DatasetSpec

EPISODE = 500
BATCH_EPISODES = 64


def make_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((n, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
        "reward": rng.uniform(0, 1, n).astype(np.float32),
        "value": rng.normal(50, 10, n).astype(np.float32),
        "expert": (rng.uniform(size=n) < 0.4).astype(np.uint8),
        "noisy": (rng.uniform(size=n) < 0.3).astype(np.uint8),
    }


def one_run(root: Path, rows: dict[str, np.ndarray], checksums: bool) -> dict[str, float]:
    path = root / ("crc32c" if checksums else "plain")
    shutil.rmtree(path, ignore_errors=True)
    spec = DatasetSpec(robot="cartpole", source="sim", control_dt=0.02, obs_size=5, action_size=1)
    n = rows["obs"].shape[0]
    per = EPISODE * BATCH_EPISODES
    t0 = time.perf_counter()
    with Dataset.create(path, spec, checksums=checksums) as ds:
        for a in range(0, n, per):
            b = min(n, a + per)
            k = -(-(b - a) // EPISODE)
            lengths = np.full(k, EPISODE, np.int64)
            lengths[-1] = (b - a) - EPISODE * (k - 1)
            ds.append_episodes({f: v[a:b] for f, v in rows.items()}, lengths, np.zeros(k, np.int64),
                               np.zeros(k, np.int64))
    t_write = time.perf_counter() - t0
    ds = Dataset.open(path)
    t0 = time.perf_counter()
    for f in ds.field_names:
        ds.read(f)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds.verify()
    t_verify = time.perf_counter() - t0
    return {"write_s": t_write, "read_s": t_read, "verify_s": t_verify, "bytes": ds.size_on_disk()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--transitions", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/dataset.json")
    ap.add_argument("--dir", default=None, help="where to write the datasets [default: a temporary folder]")
    args = ap.parse_args()
    n = args.transitions
    rows = make_rows(n)
    root = Path(args.dir or tempfile.mkdtemp(prefix="simdist-bench-dataset-"))
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "crc32c": []}
    try:
        for _ in range(args.repeats):
            for checksums in (False, True):  # alternate, so a load change hits both alike
                runs["crc32c" if checksums else "plain"].append(one_run(root, rows, checksums))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    table = {}
    print(f"{n:,} cartpole-shaped transitions, {args.repeats} repetitions (median; min-max)")
    print(f"{'codecs':<22} {'write Mrows/s':>20} {'read Mrows/s':>20} {'verify Mrows/s':>20} {'size MiB':>9}")
    for name, rs in runs.items():
        row = {}
        for key in ("write_s", "read_s", "verify_s"):
            rates = [n / r[key] / 1e6 for r in rs]
            row[key.replace("_s", "")] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
        row["size_mib"] = rs[0]["bytes"] / 2**20
        table[name] = row
        label = "bytes+blosc+crc32c" if name == "crc32c" else "bytes+blosc"

        def cell(k: str) -> str:
            return f"{row[k]['median']:.2f} ({row[k]['min']:.2f}-{row[k]['max']:.2f})"

        print(f"{label:<22} {cell('write'):>20} {cell('read'):>20} {cell('verify'):>20} {row['size_mib']:>9.1f}")
    result = {
        "transitions": n,
        "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "table": table,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
