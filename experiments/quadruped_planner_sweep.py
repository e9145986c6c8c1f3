"""Planner settings against world models (and gaps) on the quadruped's "real" robot: one row
per (gap, model, MPPI setting), plus the expert policy per gap with `--expert`. Reports
forward progress, falls and planner latency as mean ± std over episodes. Reproduces the
planner diagnostics of docs/notes/quadruped-slope-investigation.md.

    python -m experiments.quadruped_planner_sweep \\
        --model zero-shot=robots/quadruped/pretrained/model --model finetuned=DIR \\
        --planner default= --planner t8=temperature=8 --planner std03=init_std=0.3 \\
        [--base default] [--gap slippery-slope ...] [--expert DIR] [--episodes 5] [--out FILE]

A planner is NAME=key=value,key=value: fields of `MPPIConfig` replacing those of the
`--base` preset (`NAME=` is the base preset unchanged; a tuple field takes colon-separated
values, `prior_command_scales=1:2:3`). Every row is cached in the output JSON as it finishes,
so an interrupted sweep continues; delete the file to start over.

`--expert-proposals` (with `--expert`) is a diagnostic, not a deployable planner: the first
action of the policy prior's chunk, around which MPPI draws its prior samples, is replaced by
the expert policy's action for the current observation. It asks whether the planner fails for
want of good proposals (then this row walks) or because the model misjudges them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from simdist.backends import make_backend
from simdist.config import write_json
from simdist.pipelines import deploy as dep
from simdist.planning import mppi
from simdist.planning.controller import PlannerController, _floats, _host_state
from simdist.robots import get_robot


class ExpertProposalPlanner(PlannerController):
    """MPPI whose prior chunk starts with the expert's action (see the module docstring)."""

    name = "planner+expert-proposal"

    def __init__(self, planner: PlannerController, expert):
        super().__init__(planner.model, planner.mppi, planner.action_low, planner.action_high,
                         warm_start=planner.warm_start)
        self._key = planner._key  # the same per-step keys as the plain planner's row
        self.expert = expert
        base = self.plan_model
        graphdef = nnx.split(self.model)[0]
        cfg, lo, hi, warm = self.mppi, self.action_low, self.action_high, self.warm_start

        def prior(params, ctx, command):
            return base.prior(params, ctx, command).at[0].set(ctx["expert_action"])

        plan_model = base._replace(prior=prior)

        def control_step(params, hist_obs, hist_act, obs, command, prev, key, expert_action):
            ctx = dict(nnx.merge(graphdef, params).context(hist_obs, hist_act, obs), expert_action=expert_action)
            return mppi.plan(cfg, plan_model, params, ctx, command, prev, key, lo, hi, warm_start=warm)

        self._oracle_fn = jax.jit(control_step)

    def _plan(self, hist_obs, hist_act, obs, command, state, key):
        expert_action, _ = self.expert.act(obs, command)
        action, new_state, diag = jax.device_get(
            self._oracle_fn(self.params, hist_obs, hist_act, obs, command, state, key, expert_action))
        return np.asarray(action, np.float32), _host_state(new_state), _floats(diag)


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
        kind = type(getattr(base, key))
        # A tuple field takes colon-separated values (the comma separates fields): 1:1.5:2.
        over[key] = tuple(float(v) for v in raw.split(":")) if kind is tuple else kind(raw)
    return dataclasses.replace(base, **over)


def overrides_of(cfg: mppi.MPPIConfig, base: mppi.MPPIConfig) -> tuple[tuple[str, object], ...]:
    """The fields in which `cfg` differs from `base`, as deploy's `mppi_overrides`."""
    return tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                 if getattr(cfg, f.name) != getattr(base, f.name))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=_pair, action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--planner", type=_pair, action="append", default=[], help="NAME=key=v,... (repeatable)")
    ap.add_argument("--base", default="default", choices=sorted(mppi.PRESETS))
    ap.add_argument("--gap", action="append", default=[], help="gap name or key=value,... (repeatable)")
    ap.add_argument("--expert", type=Path, help="also run this expert policy on every gap")
    ap.add_argument("--expert-proposals", action="store_true",
                    help="diagnostic: also run each model with the expert's action in the prior chunk")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--episode-length", type=int, default=500, help="control steps (50 Hz)")
    ap.add_argument("--seed", type=int, default=1000, help="episode seed (quadruped_adaptation uses 1000)")
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_planner_sweep.json"))
    args = ap.parse_args()
    gaps = args.gap or ["slippery-slope"]
    planners = args.planner or [("default", "")]
    base = mppi.get_preset(args.base, "quadruped")  # the robot's own preset, as deploy reads it
    configs = {name: planner_config(base, spec) for name, spec in planners}  # validate all first
    if not args.model and args.expert is None:
        raise SystemExit("give at least one --model NAME=DIR or --expert DIR")
    if args.expert_proposals and (args.expert is None or not args.model):
        raise SystemExit("--expert-proposals needs --expert DIR and at least one --model")

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

    def oracle(gap: str, overrides, model_dir) -> ExpertProposalPlanner:
        cfg = dep.DeployConfig(robot="quadruped", gap=gap, seed=args.seed, mppi=args.base, mppi_overrides=overrides)
        with make_backend(cfg.backend, get_robot("quadruped"), gap=gap, seed=args.seed) as b:
            spec = b.spec
        planner = dep.make_controller(cfg, spec, model_dir=model_dir)
        return ExpertProposalPlanner(planner, dep.make_controller(cfg, spec, expert_dir=args.expert))

    for gap in gaps:
        if args.expert is not None:
            run(f"{gap} | expert", gap=gap, expert_dir=args.expert)
        for pname, cfg in configs.items():
            overrides = overrides_of(cfg, base)  # deploy's --mppi-set over the base preset
            for mname, mdir in args.model:
                run(f"{gap} | {mname} | {pname}", gap=gap, model_dir=mdir,
                    cfg={"mppi": args.base, "mppi_overrides": overrides})
                if args.expert_proposals:
                    run(f"{gap} | {mname} | {pname} | expert proposals", gap=gap,
                        controller=oracle(gap, overrides, mdir))
    print(f"\nwrote {args.out}")


def format_row(key: str, r: dict) -> str:
    pm, ps = r["progress_m"]
    lat = r["latency_ms"]
    return (f"{key:60s} {pm:+6.2f} ± {ps:4.2f} m  falls {r['falls']}/{r['episodes']}"
            f"  p50/p99 {lat['p50']:6.1f}/{lat['p99']:6.1f} ms")


if __name__ == "__main__":
    main()
