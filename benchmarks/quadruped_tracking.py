"""Velocity tracking of a quadruped expert in MJX: forward-velocity mean absolute error, falls
and distance on a fixed forward command, per snapshot. Reproduces the expert table of
docs/quadruped.md.

    python benchmarks/quadruped_tracking.py RUN_DIR [--episodes 10] [--vx 0.5] [--last 3]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from simdist.envs import MjxEnv
from simdist.rl.policy import load_snapshots
from simdist.rl.ppo import snapshot_action
from simdist.robots import get_robot


def make_tracker(env: MjxEnv, graphdef, n: int, vx: float):
    """A jitted `(policy params, key) -> (vx MAE, fell, alive steps, distance)` per episode."""
    act = snapshot_action(graphdef)
    T = env.config.episode_length

    def run(p, key):
        st = env.batch_reset(key, n)
        x0 = st.data.qpos[:, :2]

        def body(c, k):
            st, alive, err, fell, steps, pos = c
            st2 = env.batch_step(st, act(p, st.privileged_obs, k))
            live = alive & ~st2.done  # still in the first episode after this step
            err = err + jnp.where(live, jnp.abs(st2.deployable_obs[:, 0] - vx), 0.0)
            steps = steps + live
            fell = fell | (alive & st2.terminated)
            pos = jnp.where(live[:, None], st2.data.qpos[:, :2], pos)
            return (st2, live, err, fell, steps, pos), None

        init = (st, jnp.ones(n, bool), jnp.zeros(n), jnp.zeros(n, bool), jnp.zeros(n), x0)
        (_, _, err, fell, steps, pos), _ = jax.lax.scan(body, init, jax.random.split(key, T))
        return err / jnp.maximum(steps, 1), fell, steps, jnp.linalg.norm(pos - x0, axis=-1)

    return jax.jit(run)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--vx", type=float, default=0.5)
    ap.add_argument("--last", type=int, default=3, help="evaluate the last N snapshots")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    snaps = load_snapshots(args.run_dir, "quadruped")
    cfg = snaps[-1].config
    env_cfg = dataclasses.replace(cfg.env, vx_range=(args.vx, args.vx), vy_range=(0.0, 0.0),
                                  yaw_rate_range=(0.0, 0.0), zero_command_probability=0.0)
    env = MjxEnv(get_robot("quadruped").make_task(env_cfg))
    print(f"{'snapshot':>9s} | {'vx MAE m/s':>10s} | {'falls':>6s} | {'distance m':>10s}")
    for s in snaps[-args.last:]:
        run = make_tracker(env, s.graphdef, args.episodes, args.vx)
        mae, fell, _, dist = map(np.asarray, run((s.params, s.obs_stats), jax.random.key(args.seed)))
        print(f"{s.iteration:>9d} | {mae.mean():>10.3f} | {int(fell.sum()):>3d}/{args.episodes:<2d} | {dist.mean():>10.2f}")


if __name__ == "__main__":
    main()
