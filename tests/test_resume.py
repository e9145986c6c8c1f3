"""Kill-anywhere resume: each trainer is killed at named points of the shared training loop
(deterministically, through its `fail_at` hook), rerun, and must end where an uninterrupted run
ends: the same weights bit for bit, each history step once, the same final metrics."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from simdist.training import InjectedFailure, fail_at_from_env, prepare_run_dir

TIMING = ("wall_s", "windows_per_s")


def _kill_at(point: str, step: int):
    def fail(p: str, s: int) -> None:
        if (p, s) == (point, step):
            raise InjectedFailure(f"{p}:{s}")

    return fail


def _run_killed(train, kills, **kw):
    """Run `train` once per kill point (each must die there), then once to the end."""
    for point, step in kills:
        with pytest.raises(InjectedFailure):
            train(fail_at=_kill_at(point, step), **kw)
    return train(**kw)


def _history(out, drop=TIMING):
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (out / "history.jsonl").read_text().splitlines()]


def _metrics(out):
    m = json.loads((out / "metrics.json").read_text())
    return {k: v for k, v in m.items() if not k.endswith("_this_invocation")}


def _same_model(a, b):
    from simdist.models.io import load_model

    pa, pb = (nnx.to_pure_dict(nnx.state(load_model(d)[0])) for d in (a, b))
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


class _Toy:
    """A stage with a random walk for a state: steps seeded by their number, snapshots at 0 and 4."""

    def __init__(self, out):
        from simdist.training import Stage

        class Toy(Stage):
            x = np.zeros(3)

            def state(self):
                return {"x": self.x}

            def load(self, state, history):
                self.x = np.asarray(state["x"])

            def step(self, step):
                self.x = self.x + np.random.default_rng(step).normal(size=3)
                return {"loss": float(self.x.sum())}

            def evaluate(self, step, metrics):
                return {"step": step, "loss": float(np.mean([m["loss"] for m in metrics])) if metrics else None}, {}

            def snapshot(self, step):
                return {"x": self.x}, {"step": step}

            def finish(self, result):
                return {"x": self.x.tolist(), "rows": len(result.history)}

        from simdist.training import RunSpec

        self.stage = Toy()
        self.spec = RunSpec(out, "toy", "toy_state", {"robot": "none"}, total=7, checkpoint_every=3, eval_every=2,
                            eval_at_start=True, snapshot_steps=frozenset({0, 4, 7}))


def test_loop_killed_at_every_point_of_every_step_ends_as_an_uninterrupted_run(tmp_path):
    from simdist.checkpointing import Checkpoints
    from simdist.training import FAIL_POINTS, run

    def finished(out, kill=None):
        toy = _Toy(out)
        prepare_run_dir(out, toy.spec.config, "toy")
        return run(toy.spec, toy.stage, show_progress=False, fail_at=kill)

    ref = finished(tmp_path / "ref")
    kills = [("after_history", 0), ("after_snapshot", 0), ("after_step", 4), ("after_history", 4),
             ("after_snapshot", 4), ("after_checkpoint", 6), ("before_final", 7), ("before_metrics", 7)]
    assert {p for p, _ in kills} == set(FAIL_POINTS)
    for point, step in kills:
        out = tmp_path / f"{point}-{step}"
        with pytest.raises(InjectedFailure):
            finished(out, _kill_at(point, step))
        res = finished(out)
        assert res.metrics == ref.metrics and json.loads((out / "metrics.json").read_text()) == ref.metrics
        assert _history(out) == _history(tmp_path / "ref"), (point, step)
        snaps = Checkpoints(out / "snapshots")
        assert snaps.steps() == [0, 4, 7]
        assert snaps.meta(4) == {"step": 4}
        np.testing.assert_array_equal(snaps.restore(7, {"x": np.zeros(3)})["x"], ref.metrics["x"])
        snaps.close()


# The tests of this group train the same seed-1 tiny expert config (only the iteration count,
# checkpoint cadence and snapshot count differ, which are not compiled): on one worker they
# compile PPO once (`make test` runs xdist with --dist loadgroup).
@pytest.mark.xdist_group("tiny_expert_seed1")
def test_train_expert_survives_a_kill_between_snapshot_and_checkpoint(tmp_path):
    from simdist.pipelines.train_expert import make_config, train_expert
    from simdist.rl.policy import load_snapshots

    cfg = make_config("cartpole", "tiny", 1, {"ppo.num_iterations": 6, "ppo.checkpoint_every": 2,
                                              "ppo.num_snapshots": 4})
    assert cfg.ppo.snapshot_iterations() == (0, 2, 4, 6)
    # The reference: stopped at iteration 2, resumed (a resume restarts the envs, seeded by its start).
    ref = tmp_path / "ref"
    train_expert(cfg, ref, show_progress=False, stop_after=2)
    train_expert(cfg, ref, show_progress=False)

    out = tmp_path / "killed"

    def train(**kw):
        return train_expert(cfg, out, show_progress=False, **kw)

    with pytest.raises(InjectedFailure):
        train(fail_at=_kill_at("after_history", 3))
    # What else a kill can leave: a torn history line and orbax's temporary folder of a later step.
    with (out / "history.jsonl").open("a") as f:
        f.write('{"iteration": 4, "episode_ret')
    (out / "checkpoints" / "4.orbax-checkpoint-tmp-1234").mkdir()
    # Killed after snapshots/4 and before checkpoints/4: the rerun resumes from 2 and must redo 4.
    result = _run_killed(train, [("after_snapshot", 4), ("after_checkpoint", 6), ("before_metrics", 6)])
    assert result.iteration == 6 and result.metrics is not None
    assert [r["iteration"] for r in _history(out)] == [1, 2, 3, 4, 5, 6]
    assert _history(out) == _history(ref)
    assert _metrics(out) == _metrics(ref)
    snaps, refs = load_snapshots(out), load_snapshots(ref)
    assert [s.iteration for s in snaps] == [0, 2, 4, 6] == [s.iteration for s in refs]
    for a, b in zip(snaps, refs):
        jax.tree.map(np.testing.assert_array_equal, (a.params, a.obs_stats), (b.params, b.obs_stats))
    assert not list((out / "checkpoints").glob("*tmp*"))


def test_distill_killed_anywhere_ends_as_an_uninterrupted_run(tiny_dataset, tmp_path):
    from simdist.pipelines.distill import distill, make_config

    ds, _ = tiny_dataset
    cfg = make_config("cartpole", "tiny", 0, {"steps": 40, "eval_every": 10, "checkpoint_every": 15})
    ref = distill(cfg, ds.path, tmp_path / "ref", show_progress=False)
    out = tmp_path / "killed"
    kills = [("after_history", 0), ("after_history", 20), ("after_checkpoint", 30), ("before_metrics", 40)]
    result = _run_killed(lambda **kw: distill(cfg, ds.path, out, show_progress=False, **kw), kills)
    assert result.step == 40 and result.started_at == 40
    # Each evaluation once; the train loss of step 20, whose window began before checkpoint 15,
    # equals the uninterrupted run's (the checkpoint carries the losses since the last evaluation).
    assert [r["step"] for r in _history(out)] == [0, 10, 20, 30, 40]
    assert _history(out) == _history(ref.out)
    assert _metrics(out) == _metrics(ref.out)
    _same_model(out, ref.out)


def test_finetune_killed_anywhere_ends_as_an_uninterrupted_run(tiny_model, tiny_dataset, tmp_path):
    from simdist.pipelines.finetune import finetune, make_config

    _, parent = tiny_model
    ds, _ = tiny_dataset  # a labelled dataset serves as "real" data too (its labels are not used)
    cfg = make_config("tiny", 0, "residual", {"steps": 40, "eval_every": 20, "checkpoint_every": 15})
    ref = finetune(cfg, parent.out, ds.path, tmp_path / "ref", show_progress=False)
    out = tmp_path / "killed"
    kills = [("after_step", 17), ("after_history", 20), ("before_final", 40)]
    result = _run_killed(lambda **kw: finetune(cfg, parent.out, ds.path, out, show_progress=False, **kw), kills)
    assert result.step == 40 and result.metrics is not None
    assert [r["step"] for r in _history(out)] == [0, 20, 40]
    assert _history(out) == _history(ref.out)
    assert _metrics(out) == _metrics(ref.out)
    _same_model(out, ref.out)


def test_fail_at_from_the_environment(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    monkeypatch.delenv("SIMDIST_FAIL_AT", raising=False)
    assert fail_at_from_env() is None
    monkeypatch.setenv("SIMDIST_FAIL_AT", "after_snapshot:20")
    fail = fail_at_from_env()
    fail("after_snapshot", 19), fail("after_checkpoint", 20)
    assert exits == []
    fail("after_snapshot", 20)
    assert exits == [137]
    monkeypatch.setenv("SIMDIST_FAIL_AT", "somewhere:3")
    with pytest.raises(Exception, match="expected POINT:STEP"):
        fail_at_from_env()


def test_run_directory_of_another_robot_or_config_is_refused(tmp_path):
    from simdist.errors import CheckpointError

    out = tmp_path / "run"
    prepare_run_dir(out, {"distill": {"robot": "cartpole", "steps": 4}, "dataset": "/d"}, "distill")
    prepare_run_dir(out, {"distill": {"robot": "cartpole", "steps": 4}, "dataset": "/d"}, "distill")  # same: resume
    with pytest.raises(CheckpointError, match="robot 'cartpole', not 'quadruped'"):
        prepare_run_dir(out, {"distill": {"robot": "quadruped", "steps": 4}, "dataset": "/d"}, "distill")
    with pytest.raises(CheckpointError, match=r"another config \(distill.steps differs\)"):
        prepare_run_dir(out, {"distill": {"robot": "cartpole", "steps": 5}, "dataset": "/d"}, "distill")
