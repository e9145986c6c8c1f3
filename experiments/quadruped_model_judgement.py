"""How well does a world model judge real transitions, before and after finetuning?

The planner ranks candidate action sequences by R = Σ_k γ^k r̂_k (+ the terminal value). This
script asks, on the held-out episodes of a real dataset (the same split `simdist finetune`
holds out), whether a model's *predicted* return of the actions the robot really executed
matches what its own frozen heads say about the TRUE next observations (the heads on
enc(o_{t+1..t+T}): the return a perfect latent dynamics model would predict), and how both
follow the real forward velocity. Needs no rewards: the real dataset has none.

    python -m experiments.quadruped_model_judgement --real-data REAL_DATA \\
        --model zs=robots/quadruped/pretrained/model --model ft=FINETUNED_MODEL [--horizon 10]

Per model: held-out latent MSE over the T steps; RMSE and bias of the predicted T-step
return against the heads-on-true-encodings return; their correlation across windows; the
correlation of each with the real mean forward velocity of the window; and the same for the
terminal value.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simdist.config import write_json
from simdist.data.dataset import Dataset
from simdist.models.io import load_model
from simdist.pipelines.finetune import eval_windows, split_real_data


@functools.partial(jax.jit, static_argnums=(0, 3))
def _judge(graphdef, state, b, t: int):
    m = nnx.merge(graphdef, state)
    ctx = m.context(b["hist_obs"], b["hist_act"], b["obs"][:, 0])
    a, cmd = b["act"][:, :t], b["command"][:, :t]
    z_hat = m.dynamics(ctx, a)  # ẑ_{1..T}
    z_enc = m.encode(b["obs"][:, : t + 1])  # enc(o_{0..T})
    z_prev = jnp.concatenate([ctx["z0"][:, None], z_hat[:, :-1]], 1)
    return {
        "r_pred": m.reward(z_prev, a, z_hat, cmd),
        "r_true_enc": m.reward(z_enc[:, :-1], a, z_enc[:, 1:], cmd),
        "v_pred": m.value(z_hat[:, -1], cmd[:, -1]),
        "v_true_enc": m.value(z_enc[:, t], cmd[:, -1]),
        "latent": ((z_hat - z_enc[:, 1:]) ** 2).mean(-1).mean(-1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--real-data", type=Path, required=True)
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR (repeatable)")
    ap.add_argument("--horizon", type=int, default=10, help="T: the planner's horizon (default MPPI: 10)")
    ap.add_argument("--discount", type=float, default=0.99)
    ap.add_argument("--out", type=Path, default=Path("runs/quadruped_model_judgement.json"))
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model) or {"zero-shot": "robots/quadruped/pretrained/model"}
    t = args.horizon
    first, _ = load_model(Path(next(iter(models.values()))))
    data = split_real_data(Dataset.open(args.real_data), first.cfg.history, first.cfg.horizon,
                           heldout_fraction=0.2, seed=0)  # finetune's default split
    w = eval_windows(data.heldout, 4096)
    n = len(w["obs"])
    vx = w["obs"][:, 1 : t + 1, 0].mean(1)  # base_vx, body frame: the real forward velocity
    gamma = args.discount ** np.arange(t)
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    rows = {}
    for name, path in models.items():
        model, _ = load_model(Path(path))
        g, s = nnx.split(model)
        parts = [jax.device_get(_judge(g, s, {k: v[i : i + 512] for k, v in w.items()}, t)) for i in range(0, n, 512)]
        o = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        r_pred, r_true = (o["r_pred"] * gamma).sum(1), (o["r_true_enc"] * gamma).sum(1)
        rows[name] = {
            "latent_mse": float(o["latent"].mean()),
            "return_rmse": float(np.sqrt(np.mean((r_pred - r_true) ** 2))),
            "return_bias": float(np.mean(r_pred - r_true)),
            "return_corr": corr(r_pred, r_true),
            "return_pred_vs_vx": corr(r_pred, vx),
            "return_true_enc_vs_vx": corr(r_true, vx),
            "return_true_enc_std": float(r_true.std()),
            "value_true_enc_std": float(o["v_true_enc"].std()),
            "value_rmse": float(np.sqrt(np.mean((o["v_pred"] - o["v_true_enc"]) ** 2))),
            "value_corr": corr(o["v_pred"], o["v_true_enc"]),
            "value_true_enc_vs_vx": corr(o["v_true_enc"], vx),
        }
    print(f"{n} held-out windows of {args.real_data}, T = {t}; real mean vx {vx.mean():.3f} ± {vx.std():.3f} m/s")
    head = ("model", "latent", "R rmse", "R bias", "corr(R̂,R)", "corr(R̂,vx)", "corr(R,vx)", "v rmse", "corr(v̂,v)")
    print(" | ".join(f"{h:>11s}" for h in head))
    for name, r in rows.items():
        vals = (r["latent_mse"], r["return_rmse"], r["return_bias"], r["return_corr"], r["return_pred_vs_vx"],
                r["return_true_enc_vs_vx"], r["value_rmse"], r["value_corr"])
        print(f"{name:>11s} | " + " | ".join(f"{v:11.4f}" for v in vals))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"real_data": str(args.real_data), "horizon": t, "windows": n,
                          "real_vx_mean": float(vx.mean()), "models": rows})
    for name, r in rows.items():
        print(f"{name}: std across windows of the heads-on-true-encodings return {r['return_true_enc_std']:.4f}, "
              f"of the value {r['value_true_enc_std']:.4f}; corr(value, vx) {r['value_true_enc_vs_vx']:+.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
