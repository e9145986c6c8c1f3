"""Stage 3 end to end on the tiny dataset: learning, held-out report, model directory, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx


@pytest.fixture(scope="module")
def tiny_distill(tiny_model):
    return tiny_model


def test_distill_learns_and_reports_heldout_metrics(tiny_distill):
    cfg, result = tiny_distill
    out = result.out
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(0, cfg.steps + 1, cfg.eval_every))
    # Held-out error falls from the untrained model's (step 0), and so does the training loss.
    assert hist[-1]["heldout_latent"] < 0.5 * hist[0]["heldout_latent"]
    assert hist[-1]["train_loss"] < 0.6 * hist[1]["train_loss"]
    assert hist[-1]["heldout_reward_r2"] > 0.8 > hist[0]["heldout_reward_r2"]
    m = json.loads((out / "metrics.json").read_text())
    horizon = cfg.model.horizon
    assert len(m["latent_error_per_step"]) == horizon == len(m["reward_r2_per_step"])
    # Over the horizon the dynamics beat "the latent stays where it is".
    lat, still = m["latent_error_per_step"], m["latent_error_hold_still_per_step"]
    assert lat[-1] < still[-1] and np.mean(lat) < np.mean(still)
    assert m["reward_r2_first_5"] > 0.5 and m["value_r2_first_5"] > 0.5
    assert np.isfinite(m["bc_action_mse"])
    assert (out / "horizon_error.png").stat().st_size > 1000


def test_model_directory_round_trip(tiny_distill, tiny_dataset):
    from simdist.data.windows import WindowSampler
    from simdist.models.io import load_model
    from simdist.models.loss import evaluate_batch

    cfg, result = tiny_distill
    model, meta = load_model(result.out, robot="cartpole")
    assert meta["robot"] == "cartpole" and meta["distill"]["preset"] == "tiny"
    ds, _ = tiny_dataset
    # The dataset's normalisation statistics travel inside the model.
    stats = ds.stats()
    got = model.get_stats()
    np.testing.assert_allclose(got["obs"][0], stats["obs"][0], rtol=1e-6)
    np.testing.assert_allclose(got["value"][1], stats["value"][1], rtol=1e-6)
    windows = WindowSampler(ds, cfg.model.history, cfg.model.horizon, split="heldout")
    batch = windows.sample(64, np.random.default_rng(0))
    a = evaluate_batch(model, batch)
    b = evaluate_batch(load_model(result.out)[0], batch)
    np.testing.assert_array_equal(a["reward_pred"], b["reward_pred"])
    with pytest.raises(Exception, match="not 'quadruped'"):
        load_model(result.out, robot="quadruped")


def test_resumed_distill_matches_an_uninterrupted_run(tiny_distill, tiny_dataset, tmp_path):
    from simdist.models.io import load_model
    from simdist.pipelines.distill import distill

    cfg, full = tiny_distill
    ds, _ = tiny_dataset
    out = tmp_path / "resumed"
    part = distill(cfg, ds.path, out, show_progress=False, stop_after=cfg.checkpoint_every)
    assert part.metrics is None and part.step == cfg.checkpoint_every
    assert not (out / "model.json").exists()  # an unfinished run is not a model
    done = distill(cfg, ds.path, out, show_progress=False)
    assert done.started_at == cfg.checkpoint_every
    a = nnx.to_pure_dict(nnx.state(load_model(full.out)[0]))
    b = nnx.to_pure_dict(nnx.state(load_model(out)[0]))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "simdist.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_rejects_bad_datasets_with_one_line(tiny_dataset, tmp_path):
    ds, _ = tiny_dataset
    info = _cli("data", "info", str(ds.path))
    assert info.returncode == 0, info.stderr
    assert "cartpole" in info.stdout and "obs" in info.stdout and "sim" in info.stdout
    (tmp_path / "junk").mkdir()
    # A dataset of another robot, and one with a field missing.
    import shutil

    other, holed = tmp_path / "other", tmp_path / "holed"
    shutil.copytree(ds.path, other)
    meta = json.loads((other / "zarr.json").read_text())
    meta["attributes"]["robot"] = "quadruped"
    (other / "zarr.json").write_text(json.dumps(meta))
    shutil.copytree(ds.path, holed)
    shutil.rmtree(holed / "value")
    for data, needle in ((other, "not 'cartpole'"), (holed, "missing field 'value'")):
        r = _cli("distill", "--data", str(data), "--out", str(tmp_path / "m0"), "--preset", "tiny")
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # A dataset written before the relabelled BC target existed (no expert_action field) still
    # opens, and distilling it with model.bc_target=relabelled is refused before anything is made.
    old = tmp_path / "old"
    shutil.copytree(ds.path, old)
    meta = json.loads((old / "zarr.json").read_text())
    del meta["attributes"]["fields"]["expert_action"], meta["attributes"]["expert_action"]
    (old / "zarr.json").write_text(json.dumps(meta))
    shutil.rmtree(old / "expert_action")
    assert _cli("data", "info", str(old)).returncode == 0
    r = _cli("distill", "--data", str(old), "--out", str(tmp_path / "m3"), "--preset", "tiny",
             "--set", "model.bc_target=relabelled")
    assert r.returncode == 2 and "expert_action" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "m3").exists()
    cases = [
        ("distill", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m1"), "--preset", "tiny"),
        ("distill", "--data", str(tmp_path / "junk"), "--out", str(tmp_path / "m2"), "--preset", "tiny"),
        ("data", "info", str(tmp_path / "junk")),
    ]
    for args in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
        assert "Traceback" not in r.stderr + r.stdout


def test_out_that_is_a_dataset_is_refused_before_anything_is_written(tiny_model, tiny_dataset, tmp_path):
    import os

    from simdist.errors import ConfigError
    from simdist.pipelines.distill import distill

    cfg, _ = tiny_model
    ds, _ = tiny_dataset
    before = sorted(os.listdir(ds.path))
    other = tmp_path / "other_dataset"  # any dataset directory (its zarr.json is the marker)
    other.mkdir()
    (other / "zarr.json").write_text((ds.path / "zarr.json").read_text())
    for out, needle in ((ds.path, "is (inside) the dataset"), (ds.path / "model", "is (inside) the dataset"),
                        (other, "is a dataset directory")):
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            distill(cfg, ds.path, out, show_progress=False)
    assert sorted(os.listdir(ds.path)) == before and os.listdir(other) == ["zarr.json"]
