"""The artifacts the quadruped ships (robots/quadruped/pretrained): they load, act, and the
commands that default to them work with no training first (issue 5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from simdist.backends import make_backend
from simdist.cli.main import app
from simdist.robots import get_robot

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def robot():
    return get_robot("quadruped")


def test_the_quadruped_ships_a_model_and_an_expert(robot):
    from simdist.models.io import read_model_meta
    from simdist.rl.policy import load_snapshots

    model_dir, expert_dir = robot.pretrained("model"), robot.pretrained("expert")
    assert model_dir is not None and expert_dir is not None
    meta = read_model_meta(model_dir, "quadruped")
    assert meta["model"]["height_scan_shape"] == [11, 7]
    snaps = load_snapshots(expert_dir, "quadruped")
    assert snaps[-1].config.robot == "quadruped"
    # Small enough to ship in the package.
    size = sum(p.stat().st_size for d in (model_dir, expert_dir) for p in d.rglob("*") if p.is_file())
    assert size < 8 * 2**20
    assert get_robot("cartpole").pretrained("model") is None


def test_shipped_model_stats_and_expert_give_finite_actions(robot):
    """The shipped world model carries the dataset's normalisation statistics (not the
    identity), and both controllers turn a real observation into a finite action in range."""
    from simdist.models.io import load_model
    from simdist.pipelines.deploy import DeployConfig, make_controller

    model, _ = load_model(robot.pretrained("model"), "quadruped")
    stats = {k: np.asarray(v) for k, v in _stats_arrays(model).items()}
    assert stats and any(np.any(np.abs(v - 1.0) > 1e-3) and np.any(v != 0) for v in stats.values())
    with make_backend("sim-real", robot, "none") as b:
        obs = b.reset(seed=0)
        spec = b.spec
        cfg = DeployConfig(robot="quadruped", mppi="tiny")
        for kw in ({"model_dir": robot.pretrained("model")}, {"expert_dir": robot.pretrained("expert")}):
            c = make_controller(cfg, spec, **kw)
            c.reset(obs, b.command())
            a, _ = c.act(obs, b.command())
            a = np.asarray(a)
            assert a.shape == (12,) and np.all(np.isfinite(a))
            assert np.all(a >= spec.action_low - 1e-6) and np.all(a <= spec.action_high + 1e-6)


def _flat(model, *filters) -> dict:
    """{path: array} of a model's nnx state (optionally only the variables of `filters`)."""
    from flax import nnx

    state = nnx.state(model, *filters) if filters else nnx.state(model)
    return {"/".join(map(str, p)): np.asarray(v.get_value() if hasattr(v, "get_value") else v)
            for p, v in nnx.to_flat_state(state)}


def _stats_arrays(model) -> dict:
    from simdist.models.world_model import Stats

    return _flat(model, Stats)


def test_deploy_and_finetune_default_to_the_shipped_model(tmp_path):
    """`simdist deploy --robot quadruped` (no --model, no --gap) plans with the shipped model on
    the default gap and records real data;
    `simdist finetune` without --model finetunes the shipped model on it."""
    runner = CliRunner()
    rec = tmp_path / "real"
    r = runner.invoke(app, ["deploy", "--robot", "quadruped", "--episodes", "2",
                            "--episode-length", "30", "--mppi", "tiny", "--record", str(rec), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "shipped world model" in r.output and "forward_progress_m" in r.output
    assert "planner: elite std" in r.output  # the planner's own diagnostics are printed
    out = tmp_path / "ft"
    r = runner.invoke(app, ["finetune", "--real-data", str(rec), "--out", str(out), "--preset", "tiny",
                            "--set", "steps=5", "--no-progress"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "model.json").read_text())
    assert meta["robot"] == "quadruped"


def test_export_keeps_only_what_deploy_needs_and_never_half_writes(tiny_expert, tiny_model, tmp_path):
    """`simdist export` copies the final snapshot and the model weights (with statistics), and
    the copy plans exactly as the original; an existing export is not replaced by accident."""
    from simdist.models.io import load_model
    from simdist.rl.policy import load_snapshots

    _, expert_dir = tiny_expert
    model_dir = tiny_model[1].out
    out = tmp_path / "export"
    runner = CliRunner()
    r = runner.invoke(app, ["export", "--robot", "cartpole", "--model", str(model_dir), "--expert", str(expert_dir),
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    snaps = load_snapshots(out / "expert", "cartpole")
    assert [s.iteration for s in snaps] == [load_snapshots(expert_dir)[-1].iteration] and snaps[0].is_final
    a, _ = load_model(model_dir)
    b, _ = load_model(out / "model")
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert not (out / "model" / "checkpoints").exists()
    before = sorted(p.name for p in out.iterdir())
    r = runner.invoke(app, ["export", "--robot", "cartpole", "--expert", str(expert_dir), "--out", str(out)])
    assert r.exit_code != 0 and "exists" in str(r.exception)
    r = runner.invoke(app, ["export", "--robot", "quadruped", "--expert", str(expert_dir), "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "cartpole" in str(r.exception) and not (tmp_path / "x").exists()
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
