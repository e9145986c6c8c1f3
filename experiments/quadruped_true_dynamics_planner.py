"""A diagnostic bound: MPPI with the world model's frozen encoder and heads, but the REAL
robot's own dynamics. Not a deployable planner: it reads the simulator's state.

Every candidate action sequence is rolled out from the sim-real robot's exact current state
in a copy of its physics (`mujoco.rollout`, 2 threads), the resulting observations are encoded
by the frozen encoder, and the frozen reward and value heads score them, exactly as MPPI
scores a model's predicted latents. Everything else (search, prior samples, keys) is the
default planner's. Its forward progress bounds what ANY finetuned latent dynamics could give
this planner, proposals and objective: if it does not climb, no dynamics finetune will.

    python -m experiments.quadruped_true_dynamics_planner [--model DIR] [--gap slippery-slope] \\
        [--episodes 5] [--seed 1000] [--mppi-set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.backends import make_backend
from simdist.cli.main import _parse_set
from simdist.config import write_json
from simdist.errors import SimdistError
from simdist.pipelines import deploy as dep
from simdist.planning import mppi
from simdist.planning.controller import PlannerController, _floats, _host_state
from simdist.robots import get_robot

from experiments._common import TrueRollout


class TrueDynamicsPlanner(PlannerController):
    name = "planner+true-dynamics"

    def __init__(self, planner: PlannerController, roll: TrueRollout):
        super().__init__(planner.model, planner.mppi, planner.action_low, planner.action_high,
                         warm_start=planner.warm_start)
        self._key = planner._key  # the same per-step keys as the plain planner
        self.roll = roll
        graphdef = nnx.split(self.model)[0]
        obs_size = self.obs_size

        def dynamics(params, ctx, actions):
            n, t, _ = actions.shape
            obs = jax.pure_callback(roll, jax.ShapeDtypeStruct((n, t, obs_size), jnp.float32), actions)
            return nnx.merge(graphdef, params).encode(obs)

        plan_model = self.plan_model._replace(dynamics=dynamics)
        cfg, lo, hi, warm = self.mppi, self.action_low, self.action_high, self.warm_start

        def control_step(params, hist_obs, hist_act, obs, command, prev, key):
            ctx = nnx.merge(graphdef, params).context(hist_obs, hist_act, obs)
            return mppi.plan(cfg, plan_model, params, ctx, command, prev, key, lo, hi, warm_start=warm)

        self._true_fn = jax.jit(control_step)

    def warmup(self, obs_size, command_size):
        pass  # compiled on the first step (it needs a robot state to roll out from)

    def _plan(self, hist_obs, hist_act, obs, command, state, key):
        self.roll.capture()
        action, new_state, diag = jax.device_get(
            self._true_fn(self.params, hist_obs, hist_act, obs, command, state, key))
        return np.asarray(action, np.float32), _host_state(new_state), _floats(diag)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("robots/quadruped/pretrained/model"))
    ap.add_argument("--gap", default="slippery-slope")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--episode-length", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--first-episode", type=int, default=0, help="start at this episode of the seed's sequence")
    ap.add_argument("--mppi-set", action="append", default=[], help="KEY=VALUE over the default MPPI preset (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_true_dynamics_planner.json"))
    args = ap.parse_args()
    # The deploy command's own preset lookup, checked overrides and model checks.
    cfg = dep.DeployConfig(robot="quadruped", gap=args.gap, seed=args.seed,
                           mppi_overrides=tuple(_parse_set(args.mppi_set, "--mppi-set").items()))
    rows = []
    with make_backend("sim-real", get_robot("quadruped"), gap=args.gap, seed=args.seed) as backend:
        spec = backend.spec
        lo, hi = np.asarray(spec.action_low), np.asarray(spec.action_high)
        base = dep.make_controller(cfg, spec, model_dir=args.model)
        mcfg = base.mppi
        ctl = TrueDynamicsPlanner(base, TrueRollout(backend))
        probe = backend.probe()
        for ep in range(args.first_episode, args.first_episode + args.episodes):
            t0 = time.perf_counter()
            obs = backend.reset(seed=dep.episode_seed(args.seed, ep))
            ctl.reset(obs, backend.command())
            steps = 0
            while steps < args.episode_length and not backend.done():
                a, _ = ctl.act(obs, backend.command())
                obs = backend.step(np.clip(np.asarray(a, np.float64), lo, hi))
                steps += 1
            m = probe.episode_metrics()
            rows.append({"progress_m": m["forward_progress_m"], "fell": bool(backend.done() and steps < args.episode_length),
                         "steps": steps, "return": probe.episode_return, "wall_s": time.perf_counter() - t0})
            print(f"episode {ep}: {m['forward_progress_m']:+.2f} m, {steps} steps, fell {rows[-1]['fell']}, "
                  f"{rows[-1]['wall_s']:.0f} s", flush=True)
    p = np.array([r["progress_m"] for r in rows])
    falls = sum(r["fell"] for r in rows)
    print(f"true-dynamics planner, {args.gap}, {args.model}: {p.mean():+.2f} ± {p.std():.2f} m, falls {falls}/{len(rows)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"model": str(args.model), "gap": args.gap, "seed": args.seed, "first_episode": args.first_episode, "mppi": dataclasses.asdict(mcfg),
                          "progress_m": [float(p.mean()), float(p.std())], "falls": falls, "episodes": rows})


if __name__ == "__main__":
    try:
        main()
    except SimdistError as e:
        raise SystemExit(f"error: {e}") from None
