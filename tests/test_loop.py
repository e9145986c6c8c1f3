"""The closed loop across stages: what deploy records, finetune accepts; CLI errors of the loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np


def test_dataset_recorded_by_deploy_is_accepted_by_finetune(tiny_model, tmp_path):
    from simdist.data.dataset import Dataset
    from simdist.models.io import load_model
    from simdist.pipelines.deploy import DeployConfig, deploy
    from simdist.pipelines.finetune import finetune, make_config

    _, distilled = tiny_model
    real = tmp_path / "real"
    cfg = DeployConfig(robot="cartpole", episodes=5, episode_length=50, mppi="tiny", gap="default", seed=3)
    res = deploy(cfg, model_dir=distilled.out, record=real, show_progress=False)
    ds = Dataset.open(real)
    assert ds.spec.source == "real" and not ds.spec.labels
    assert ds.n_transitions == res.recorded_transitions == sum(res.steps)
    assert "reward" not in ds.spec.fields() and "value" not in ds.spec.fields()
    ds.close()

    out = tmp_path / "ft"
    fcfg = make_config("tiny", 0, "dynamics", {"steps": 40, "eval_every": 20, "checkpoint_every": 40})
    result = finetune(fcfg, distilled.out, real, out, show_progress=False)
    m = result.metrics
    assert np.isfinite(m["latent_error_before"]) and np.isfinite(m["latent_error_after"])
    model, meta = load_model(out, robot="cartpole")
    assert meta["source"] == "finetune" and meta["mode"] == "dynamics"
    # The finetuned model deploys again.
    again = deploy(DeployConfig(robot="cartpole", episodes=1, episode_length=20, mppi="tiny", gap="default"),
                   model_dir=out, show_progress=False)
    assert again.steps == [20] and np.isfinite(again.returns[0])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "simdist.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_unknown_gap_key_is_one_line(tiny_expert, tmp_path):
    _, expert = tiny_expert
    for gap, needle in (("polemass=2", "unknown gap key 'polemass'"), ("nosuchgap", "unknown gap")):
        r = _cli("deploy", "--robot", "cartpole", "--expert", str(expert), "--gap", gap, "--episodes", "1",
                 "--no-progress")
        assert r.returncode == 2, (r.stdout, r.stderr)
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    # --json writes the per-episode report that the printed summary comes from.
    out = tmp_path / "reports" / "deploy.json"
    r = _cli("deploy", "--robot", "cartpole", "--expert", str(expert), "--episodes", "2", "--episode-length", "30",
             "--seed", "3", "--no-progress", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["config"]["seed"] == 3 and rep["config"]["episodes"] == 2 and rep["expert"] == str(expert)
    assert [e["steps"] for e in rep["episodes"]] == rep["steps"] and len(rep["steps"]) == 2
    for e in rep["episodes"]:
        assert f"episode {e['episode'] + 1:3d}: return {e['ground_truth_return']:8.2f}  ({e['steps']} steps)" in r.stdout
    # And `simdist robots` lists the cartpole's named gaps with their keys.
    r = _cli("robots")
    assert r.returncode == 0 and "default" in r.stdout and "pole_mass" in r.stdout
