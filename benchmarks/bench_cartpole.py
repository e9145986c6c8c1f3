"""Throughput of the cartpole: MJX env steps per second at several batch sizes, PPO training
steps per second per preset, Stage 2 dataset generation (transitions per second, written to
tensorstore) and Stage 3 distillation (training windows per second). Prints tables and
writes JSON.

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


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def bench_env(batch_sizes, steps: int, robot: str = "cartpole") -> list[dict]:
    from simdist.envs import MjxEnv
    from simdist.robots import get_robot

    robot = get_robot(robot)
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


def _random_snapshots(n: int):
    """Policy snapshots with untrained weights: generation speed does not depend on them."""
    from flax import nnx

    from simdist.pipelines.train_expert import make_config
    from simdist.rl.normalizer import RunningStats
    from simdist.rl.policy import PolicySnapshot
    from simdist.rl.ppo import make_actor_critic
    from simdist.robots import get_robot

    cfg = make_config("cartpole", "default", 0)
    task = get_robot("cartpole").make_task(cfg.env)
    out = []
    for i in range(n):
        graphdef, params = nnx.split(make_actor_critic(len(task.privileged_obs_names), 1, cfg.ppo, i))
        out.append(PolicySnapshot(i, i == n - 1, cfg, graphdef, params,
                                  RunningStats.create(len(task.privileged_obs_names)), {}))
    return out


def bench_generate(presets, chunks: int, tmp: Path) -> list[dict]:
    """Rollouts + episode assembly + tensorstore appends, after compilation."""
    import shutil

    from simdist.data.dataset import Dataset
    from simdist.data.generate import EpisodeAssembler, bank_params, init_gen_state, make_chunk_fn, make_policy_bank
    from simdist.envs import MjxEnv
    from simdist.pipelines.generate_data import dataset_spec
    from simdist.pipelines.generate_data import make_config as data_config
    from simdist.robots import get_robot

    rows = []
    for preset in presets:
        cfg = data_config("cartpole", preset, 0)
        snaps = _random_snapshots(8)
        env = MjxEnv(get_robot("cartpole").make_task(snaps[-1].config.env))
        bank = make_policy_bank(snaps)
        params = bank_params(bank)
        fn = make_chunk_fn(env, bank, cfg.perturb, cfg.chunk_steps)
        gs = init_gen_state(env, bank, cfg.perturb, jax.random.key(0), cfg.num_envs)
        t0 = time.perf_counter()
        gs, recs = fn(gs, params)
        jax.block_until_ready(recs)
        compile_s = time.perf_counter() - t0
        path = tmp / f"gen-{preset}"
        shutil.rmtree(path, ignore_errors=True)
        spec = dataset_spec("cartpole", env.task, env.config.ctrl_dt)
        fields = tuple(f for f in ("obs", "action", "command", "reward", "value", "expert", "noisy") if f in spec.fields())
        asm = EpisodeAssembler(cfg.num_envs, fields)
        with Dataset.create(path, spec) as ds:
            t0 = time.perf_counter()
            t_roll = 0.0
            for _ in range(chunks):
                t1 = time.perf_counter()
                gs, recs = fn(gs, params)
                recs = jax.device_get(recs)
                t_roll += time.perf_counter() - t1
                asm.add(recs)
                if asm.ready_transitions:
                    ds.append_episodes(*asm.take())
            dt = time.perf_counter() - t0
            written = ds.n_transitions
        simulated = chunks * cfg.chunk_steps * cfg.num_envs
        rows.append({
            "preset": preset,
            "num_envs": cfg.num_envs,
            "transitions_written": written,
            "transitions_per_s": simulated / dt,
            "rollout_only_transitions_per_s": simulated / t_roll,
            "compile_s": compile_s,
            "default_dataset_estimate_s": compile_s + cfg.transitions / (simulated / dt),
        })
        print(f"  generate {preset:8s}: {simulated / dt:10,.0f} transitions/s end to end "
              f"({simulated / t_roll:10,.0f} rollout only)", flush=True)
        shutil.rmtree(path, ignore_errors=True)
    return rows


def bench_distill(presets, steps: int, tmp: Path) -> list[dict]:
    """Window sampling + one jitted training step, after compilation, both dynamics variants."""
    import dataclasses
    import shutil

    import numpy as np
    from flax import nnx

    from simdist.data.dataset import Dataset, DatasetSpec
    from simdist.data.windows import WindowSampler
    from simdist.models.train import WorldModelTrainer, make_optimizer
    from simdist.models.world_model import WorldModel, count_params
    from simdist.pipelines.distill import make_config

    # A synthetic labelled dataset of 200 episodes x 300 steps (speed does not depend on content).
    path = tmp / "distill-data"
    shutil.rmtree(path, ignore_errors=True)
    rng = np.random.default_rng(0)
    n_ep, length = 200, 300
    n = n_ep * length
    spec = DatasetSpec(robot="cartpole", source="sim", control_dt=0.02, obs_size=5, action_size=1)
    steps_data = {"obs": rng.standard_normal((n, 5), np.float32), "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32),
                  "reward": rng.random(n, np.float32), "value": rng.random(n, np.float32),
                  "expert": rng.random(n) < 0.5, "noisy": rng.random(n) < 0.1}
    with Dataset.create(path, spec) as ds:
        ds.append_episodes(steps_data, np.full(n_ep, length), np.zeros(n_ep, np.int64), np.zeros(n_ep, np.int64))
    ds = Dataset.open(path)
    rows = []
    for preset in presets:
        for dyn in ("transformer", "mlp"):
            cfg = make_config("cartpole", preset, 0)
            mcfg = dataclasses.replace(cfg.model, dynamics=dyn)
            sampler = WindowSampler(ds, mcfg.history, mcfg.horizon, split="train")
            model = WorldModel(mcfg, rngs=nnx.Rngs(0), stats=ds.stats())
            trainer = WorldModelTrainer(model, make_optimizer(1e-3, 1e-4, 10, steps + 1))
            key = jax.random.key(0)
            t0 = time.perf_counter()
            jax.block_until_ready(trainer.step(sampler.sample(cfg.batch_size, rng), key))
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            t_sample = 0.0
            for i in range(steps):
                t1 = time.perf_counter()
                batch = sampler.sample(cfg.batch_size, rng)
                t_sample += time.perf_counter() - t1
                m = trainer.step(batch, jax.random.fold_in(key, i))
            jax.block_until_ready(m)
            dt = time.perf_counter() - t0
            wps = steps * cfg.batch_size / dt
            rows.append({
                "preset": preset, "dynamics": dyn, "batch": cfg.batch_size, "history": mcfg.history,
                "horizon": mcfg.horizon, "parameters": count_params(model), "windows_per_s": wps,
                "ms_per_step": dt / steps * 1e3, "sampling_ms_per_step": t_sample / steps * 1e3,
                "compile_s": compile_s, "preset_run_estimate_s": compile_s + cfg.steps * dt / steps,
            })
            print(f"  distill {preset:8s} {dyn:11s}: {wps:9,.0f} windows/s ({dt / steps * 1e3:6.1f} ms/step, "
                  f"sampling {t_sample / steps * 1e3:4.1f} ms)", flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return rows


def bench_planner(presets, steps: int, robot: str = "cartpole") -> list[dict]:
    """Latency of one control step of the deploy controller (context encoding + MPPI plan)
    with the robot's default world model architecture (untrained weights: the cost does
    not depend on them), per MPPI preset and dynamics variant."""
    import dataclasses

    import numpy as np
    from flax import nnx

    from simdist.models.world_model import WorldModel
    from simdist.pipelines.distill import make_config
    from simdist.planning.controller import PlannerController
    from simdist.planning.mppi import get_preset

    rows = []
    base = make_config(robot, "default", 0).model
    ones = np.ones(base.action_size, np.float32)
    rng = np.random.default_rng(0)
    for dyn in ("transformer", "mlp"):
        for preset in presets:
            mppi = get_preset(preset, robot)
            # The MLP dynamics has no context tokens for the prior to read.
            mcfg = dataclasses.replace(base, dynamics=dyn, horizon=max(base.horizon, mppi.horizon),
                                       prior_context=base.prior_context and dyn == "transformer")
            model = WorldModel(mcfg, rngs=nnx.Rngs(0))
            ctrl = PlannerController(model, mppi, -ones, ones)
            ctrl.warmup(base.obs_size, base.command_size)
            obs = rng.standard_normal(base.obs_size).astype(np.float32)
            cmd = np.zeros(base.command_size, np.float32)
            ctrl.reset(obs, cmd)
            times = []
            for _ in range(steps if preset != "paper" else max(5, steps // 10)):
                t0 = time.perf_counter()
                ctrl.act(obs, cmd)
                times.append((time.perf_counter() - t0) * 1e3)
            t = np.asarray(times)
            n_cand = mppi.samples + mppi.prior_samples + 1
            rows.append({"robot": robot, "dynamics": dyn, "preset": preset, "horizon": mppi.horizon, "candidates": n_cand,
                         "iterations": mppi.iterations, "p50_ms": float(np.percentile(t, 50)),
                         "p99_ms": float(np.percentile(t, 99)), "mean_ms": float(t.mean()), "calls": len(t)})
            print(f"  planner {dyn:11s} {preset:8s}: p50 {np.percentile(t, 50):7.1f} ms  p99 {np.percentile(t, 99):7.1f} ms",
                  flush=True)
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
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        gen_rows = bench_generate(["tiny", "default"], chunks=3 if args.quick else 10, tmp=Path(tmp))
        distill_rows = bench_distill(["tiny", "default"], steps=10 if args.quick else 50, tmp=Path(tmp))
    planner_rows = bench_planner(["tiny", "default", "paper"], steps=50 if args.quick else 300)

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
    print()
    print(f"{'generate preset':>16s} | {'envs':>6s} | {'transitions/s':>14s} | {'rollout only/s':>14s} | {'compile s':>9s}")
    print("-" * 72)
    for r in gen_rows:
        print(f"{r['preset']:>16s} | {r['num_envs']:>6d} | {r['transitions_per_s']:>14,.0f} | "
              f"{r['rollout_only_transitions_per_s']:>14,.0f} | {r['compile_s']:>9.1f}")
    print()
    print(f"{'distill preset':>16s} | {'dynamics':>11s} | {'batch':>5s} | {'params':>8s} | {'windows/s':>10s} | "
          f"{'ms/step':>8s} | {'compile s':>9s}")
    print("-" * 86)
    for r in distill_rows:
        print(f"{r['preset']:>16s} | {r['dynamics']:>11s} | {r['batch']:>5d} | {r['parameters']:>8,d} | "
              f"{r['windows_per_s']:>10,.0f} | {r['ms_per_step']:>8.1f} | {r['compile_s']:>9.1f}")
    print()
    print(f"{'planner':>12s} | {'preset':>8s} | {'horizon':>7s} | {'candidates':>10s} | {'iters':>5s} | "
          f"{'p50 ms':>7s} | {'p99 ms':>7s}")
    print("-" * 76)
    for r in planner_rows:
        print(f"{r['dynamics']:>12s} | {r['preset']:>8s} | {r['horizon']:>7d} | {r['candidates']:>10d} | "
              f"{r['iterations']:>5d} | {r['p50_ms']:>7.1f} | {r['p99_ms']:>7.1f}")
    result = {"benchmark": "cartpole", "machine": machine(), "env": env_rows, "ppo": ppo_rows,
              "generate": gen_rows, "distill": distill_rows, "planner": planner_rows,
              "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
