"""Does finetuning teach the model to rank the candidates MPPI weighs, not only the actions
the robot executed? A diagnostic that reads the simulator's state.

The sim-real robot is driven by the default planner with the first ``--model`` (zero-shot by
default). Every ``--every`` control steps, one candidate set is drawn as the default planner's
first iteration draws it, in three families:

- ``prior``: the policy prior's chunk + N(0, 0.05²) (the default's 16 prior samples);
- ``prior+0.3``: the same chunk + N(0, 0.3²), candidates a little further from the prior's gait;
- ``gauss``: the warm-started mean + N(0, 2²), clipped to the bounds (the default's Gaussian
  samples), and the warm mean itself.

Each candidate is scored by the planner's return, R = Σ γ^k r̂_k + γ^T v̂(ẑ_T), three ways:
by each model's dynamics, and by the TRUE dynamics (rolled out from the robot's exact state
in a copy of its physics, `TrueRollout`, then encoded). The encoder and heads are frozen by
finetuning, so every judge shares them; only the latents differ. Per step and judge:
Spearman rank correlation with the true returns (all candidates, and within each family), the
overlap of its top-16 (MPPI's elites) with the true top-16, and the regret: the true return of
the true top-16 minus the true return of the judge's top-16 (mean over the elites).

    python -m experiments.quadruped_candidate_ranking --model zero-shot=robots/quadruped/pretrained/model \\
        --model finetuned=DIR [--gap slippery-slope] [--episodes 2] [--every 5] [--seed 1000]
"""

from __future__ import annotations

import argparse
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
from simdist.robots import get_robot

from experiments._common import TrueRollout

ELITES = 16
FAMILIES = {"prior": (16, 0.05), "prior+0.3": (16, 0.3), "gauss": (33, 2.0)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def scorers(ctl):
    """Jitted functions of one model, all ``(hist_obs, hist_act, obs, command, ...)``:
    ``model_returns(..., actions[N,T,A]) -> [N]`` (its own dynamics), ``true_returns(...,
    actions, true_obs[N,T,O]) -> [N]`` (the true observations, encoded) and ``prior_chunk(...)
    -> [T,A]``. Finetuning freezes the encoder and heads, so true returns are the same for
    every judge and are computed with the driver's."""
    cfg, pm, params = ctl.mppi, ctl.plan_model, ctl.params
    graphdef = nnx.split(ctl.model)[0]

    def context(params, hist_obs, hist_act, obs):
        model = nnx.merge(graphdef, params)
        return model, model.context(hist_obs, hist_act, obs)

    def model_returns(params, hist_obs, hist_act, obs, command, actions):
        _, ctx = context(params, hist_obs, hist_act, obs)
        return mppi.candidate_returns(cfg, pm, params, ctx, command, pm.z0(ctx), actions)

    def true_returns(params, hist_obs, hist_act, obs, command, actions, true_obs):
        model, ctx = context(params, hist_obs, hist_act, obs)
        true_pm = pm._replace(dynamics=lambda p, c, a: model.encode(true_obs))
        return mppi.candidate_returns(cfg, true_pm, params, ctx, command, pm.z0(ctx), actions)

    def prior_chunk(params, hist_obs, hist_act, obs, command):
        _, ctx = context(params, hist_obs, hist_act, obs)
        return mppi.fit_chunk(pm.prior(params, ctx, command), cfg.horizon)

    def bind(f):
        jf = jax.jit(f)
        return lambda *a: np.asarray(jax.device_get(jf(params, *a)))

    return bind(model_returns), bind(true_returns), bind(prior_chunk)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR; the first one drives the robot")
    ap.add_argument("--gap", default="slippery-slope")
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--episode-length", type=int, default=500)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--mppi-set", action="append", default=[], help="KEY=VALUE over the default MPPI preset, for the "
                    "driver and the judges' return (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_candidate_ranking.json"))
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    cfg = dep.DeployConfig(robot="quadruped", gap=args.gap, seed=args.seed,
                           mppi_overrides=tuple(_parse_set(args.mppi_set, "--mppi-set").items()))
    rng = np.random.default_rng(args.seed)
    stats: dict[str, dict[str, list]] = {n: {} for n in models}
    progress = []
    with make_backend("sim-real", get_robot("quadruped"), gap=args.gap, seed=args.seed) as backend:
        spec = backend.spec
        lo, hi = np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32)
        ctls = {n: dep.make_controller(cfg, spec, model_dir=Path(d)) for n, d in models.items()}
        driver = ctls[next(iter(models))]
        judges = {n: scorers(c)[0] for n, c in ctls.items()}
        _, true_returns, prior_chunk = scorers(driver)
        roll = TrueRollout(backend)
        t_cfg = driver.mppi
        probe = backend.probe()
        for ep in range(args.episodes):
            t0 = time.perf_counter()
            obs = backend.reset(seed=dep.episode_seed(args.seed, ep))
            driver.reset(obs, backend.command())
            steps = 0
            while steps < args.episode_length and not backend.done():
                if steps % args.every == 0:
                    roll.capture()
                    hist_obs, hist_act = driver.history
                    o = np.asarray(obs, np.float32)
                    c = np.asarray(backend.command(), np.float32)
                    warm = np.asarray(mppi.shift_plan(driver.state.mean)) if steps else np.zeros((t_cfg.horizon, lo.size), np.float32)
                    chunk = prior_chunk(hist_obs, hist_act, o, c)
                    fams, cands = [], []
                    for fam, (n, std) in FAMILIES.items():
                        centre = warm if fam == "gauss" else chunk
                        x = centre + std * rng.standard_normal((n, *centre.shape)).astype(np.float32)
                        if fam == "gauss":
                            x[0] = warm
                        cands.append(np.clip(x, lo, hi))
                        fams += [fam] * n
                    acts = np.concatenate(cands).astype(np.float32)
                    fams = np.array(fams)
                    r_true = true_returns(hist_obs, hist_act, o, c, acts, roll(acts))
                    top_true = np.argsort(-r_true)[:ELITES]
                    for fam in FAMILIES:
                        stats.setdefault("true", {}).setdefault(f"elite_share_{fam}", []).append(float(np.mean(fams[top_true] == fam)))
                    for n, judge in judges.items():
                        r_model = judge(hist_obs, hist_act, o, c, acts)
                        top = np.argsort(-r_model)[:ELITES]
                        s = stats[n]
                        s.setdefault("spearman_all", []).append(spearman(r_model, r_true))
                        for fam in FAMILIES:
                            k = fams == fam
                            s.setdefault(f"spearman_{fam}", []).append(spearman(r_model[k], r_true[k]))
                        s.setdefault("top16_overlap", []).append(len(set(top) & set(top_true)) / ELITES)
                        s.setdefault("regret", []).append(float(r_true[top_true].mean() - r_true[top].mean()))
                        s.setdefault("bias", []).append(float((r_model - r_true).mean()))
                        err = r_model - r_true
                        for fam in FAMILIES:
                            k = fams == fam
                            # within a family: the true spread the ranking must resolve, and the
                            # model's error once its common offset at this step is removed
                            s.setdefault(f"true_std_{fam}", []).append(float(r_true[k].std()))
                            s.setdefault(f"err_std_{fam}", []).append(float(err[k].std()))
                            # > 0: the judge rates this family too highly against the others
                            s.setdefault(f"relbias_{fam}", []).append(float(err[k].mean() - err.mean()))
                        s.setdefault("regret_random", []).append(float(r_true[top_true].mean() - r_true.mean()))
                        for fam in FAMILIES:
                            s.setdefault(f"elite_share_{fam}", []).append(float(np.mean(fams[top] == fam)))
                a, _ = driver.act(obs, backend.command())
                obs = backend.step(np.clip(np.asarray(a, np.float64), lo, hi))
                steps += 1
            progress.append(probe.episode_metrics()["forward_progress_m"])
            print(f"episode {ep}: {progress[-1]:+.2f} m, {steps} steps, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = {n: {k: float(np.nanmean(v)) for k, v in s.items()} for n, s in stats.items()}
    keys = ["spearman_all", *[f"spearman_{f}" for f in FAMILIES], "top16_overlap", "regret", "regret_random", "bias",
            *[f"elite_share_{f}" for f in FAMILIES], *[f"true_std_{f}" for f in FAMILIES], *[f"err_std_{f}" for f in FAMILIES],
            *[f"relbias_{f}" for f in FAMILIES]]
    names = list(summary)
    print(f"{'':<22}" + "".join(f"{n:>12}" for n in names))
    for k in keys:
        print(f"{k:<22}" + "".join(f"{summary[n][k]:>12.3f}" if k in summary[n] else f"{'':>12}" for n in names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"models": models, "gap": args.gap, "mppi_set": args.mppi_set, "seed": args.seed, "episodes": args.episodes,
                          "every": args.every, "families": {k: list(v) for k, v in FAMILIES.items()},
                          "elites": ELITES, "driver_progress_m": progress, "summary": summary,
                          "steps_scored": len(stats[next(iter(models))]["regret"])})


if __name__ == "__main__":
    try:
        main()
    except SimdistError as e:
        raise SystemExit(f"error: {e}") from None
