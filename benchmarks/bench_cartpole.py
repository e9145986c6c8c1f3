"""Throughput of the cartpole: MJX env steps per second at several batch sizes, and PPO
training steps per second per preset. Prints a table and writes JSON.

    python benchmarks/bench_cartpole.py [--out benchmarks/results/cartpole.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def bench_env(batch_sizes, steps: int) -> list[dict]:
    from simdist.envs import MjxEnv
    from simdist.robots import get_robot

    robot = get_robot("cartpole")
    env = MjxEnv(robot.make_task(robot.expert_config("default").env))
    rows = []
    for n in batch_sizes:

        def run(key, n=n):
            state = env.batch_reset(key, n)

            def body(s, k):
                a = jax.random.uniform(k, (n, env.action_size), minval=-1, maxval=1)
                return env.batch_step(s, a), None

            s, _ = jax.lax.scan(body, state, jax.random.split(key, steps))
            return s.reward.sum()

        f = jax.jit(run)
        t0 = time.perf_counter()
        f(jax.random.key(0)).block_until_ready()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        f(jax.random.key(1)).block_until_ready()
        dt = time.perf_counter() - t0
        sps = n * steps / dt
        rows.append(
            {
                "batch": n,
                "control_steps_per_s": sps,
                "physics_steps_per_s": sps * env.n_substeps,
                "compile_s": compile_s,
            }
        )
        print(f"  env batch {n:5d}: {sps:12,.0f} control steps/s  ({sps * env.n_substeps:12,.0f} physics)", flush=True)
    return rows


def bench_ppo(presets, iterations: int) -> list[dict]:
    from simdist.envs import MjxEnv
    from simdist.pipelines.train_expert import make_config
    from simdist.rl.ppo import PPO
    from simdist.robots import get_robot

    rows = []
    for preset in presets:
        cfg = make_config("cartpole", preset, 0)
        env = MjxEnv(get_robot("cartpole").make_task(cfg.env))
        ppo = PPO(env, cfg.ppo)
        ts = ppo.init(jax.random.key(0))
        es = ppo.reset_envs(jax.random.key(1))
        t0 = time.perf_counter()
        ts, es, m = ppo.train_iteration(ts, es)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(iterations):
            ts, es, m = ppo.train_iteration(ts, es)
        jax.block_until_ready(m)
        dt = time.perf_counter() - t0
        sps = iterations * cfg.ppo.steps_per_iteration / dt
        rows.append(
            {
                "preset": preset,
                "num_envs": cfg.ppo.num_envs,
                "steps_per_iteration": cfg.ppo.steps_per_iteration,
                "env_steps_per_s": sps,
                "seconds_per_iteration": dt / iterations,
                "compile_s": compile_s,
                "full_run_estimate_s": compile_s + cfg.ppo.num_iterations * dt / iterations,
            }
        )
        print(f"  PPO {preset:8s}: {sps:10,.0f} env steps/s  ({dt / iterations * 1e3:7.1f} ms/iteration)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/cartpole.json")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and iterations")
    args = ap.parse_args()
    batches = [64, 256] if args.quick else [64, 256, 1024, 4096]
    print("cartpole benchmarks on", jax.default_backend(), flush=True)
    env_rows = bench_env(batches, steps=100 if args.quick else 200)
    ppo_rows = bench_ppo(["tiny", "default"], iterations=3 if args.quick else 10)

    print()
    print(f"{'MJX env, batch':>16s} | {'control steps/s':>16s} | {'physics steps/s':>16s} | {'compile s':>9s}")
    print("-" * 68)
    for r in env_rows:
        print(
            f"{r['batch']:>16d} | {r['control_steps_per_s']:>16,.0f} | {r['physics_steps_per_s']:>16,.0f} | "
            f"{r['compile_s']:>9.1f}"
        )
    print()
    print(f"{'PPO preset':>16s} | {'envs':>6s} | {'env steps/s':>12s} | {'ms/iteration':>12s} | {'compile s':>9s}")
    print("-" * 68)
    for r in ppo_rows:
        print(
            f"{r['preset']:>16s} | {r['num_envs']:>6d} | {r['env_steps_per_s']:>12,.0f} | "
            f"{r['seconds_per_iteration'] * 1e3:>12.1f} | {r['compile_s']:>9.1f}"
        )
    result = {"benchmark": "cartpole", "machine": machine(), "env": env_rows, "ppo": ppo_rows,
              "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
