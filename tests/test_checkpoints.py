"""Snapshots and training state round-trip through orbax; runs resume; bad input fails clearly."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from simdist.errors import CheckpointError, ConfigError


def test_snapshots_and_value_function_round_trip(tiny_expert):
    from simdist.envs import MjxEnv
    from simdist.rl.policy import load_expert, load_snapshots
    from simdist.rl.ppo import make_evaluator, snapshot_action
    from simdist.robots import get_robot

    result, out = tiny_expert
    snaps = load_snapshots(out, robot="cartpole")
    assert [s.iteration for s in snaps] == [0, 20, 40]
    assert [s.is_final for s in snaps] == [False, False, True]
    assert snaps[-1].config.preset == "tiny"
    # The untrained snapshot and the expert hold different parameters.
    a = jax.tree.leaves(snaps[0].params)
    b = jax.tree.leaves(snaps[-1].params)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))

    # The expert restored from disk reproduces the return measured at training time exactly.
    expert = load_expert(out, robot="cartpole")
    cfg = expert.config
    env = MjxEnv(get_robot("cartpole").make_task(cfg.env))
    run = make_evaluator(env, snapshot_action(expert.graphdef), cfg.ppo.eval_envs)
    ret = run((expert.params, expert.obs_stats), jax.random.key(cfg.seed + 10_000))
    assert float(np.mean(ret)) == pytest.approx(result.metrics["expert_return_mean"], rel=1e-5)
    v = expert.value_fn()(env.batch_reset(jax.random.key(0), 3).privileged_obs)
    assert v.shape == (3,) and np.all(np.isfinite(v))


@pytest.mark.xdist_group("tiny_expert_seed1")  # one PPO compile with tests/test_resume.py's
def test_killed_run_resumes_from_its_saved_step(tmp_path):
    from simdist.pipelines.train_expert import make_config, train_expert

    cfg = make_config("cartpole", "tiny", 1, {"ppo.num_iterations": 6, "ppo.checkpoint_every": 3})
    out = tmp_path / "run"
    first = train_expert(cfg, out, show_progress=False, stop_after=4)
    assert first.iteration == 4 and first.metrics is None
    # Iteration 4 was the end of that invocation and is saved; pretend the process died before
    # anything later. A new invocation picks up exactly there.
    second = train_expert(cfg, out, show_progress=False)
    assert second.started_at == 4 and second.iteration == 6
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (out / "metrics.json").exists() and (out / "training_curve.png").stat().st_size > 0
    # A completed run asked again does not train further.
    third = train_expert(cfg, out, show_progress=False)
    assert third.started_at == 6 and third.iteration == 6


@pytest.mark.xdist_group("tiny_expert_seed1")
def test_init_from_starts_at_the_source_expert(tiny_expert, tmp_path):
    """--init-from: iteration 0 of the new run is the source's final expert, bit for bit
    (policy, value function and normaliser); training goes on from there."""
    import dataclasses

    from simdist.pipelines.train_expert import make_config, train_expert
    from simdist.rl.policy import load_expert, load_snapshots

    source_result, source = tiny_expert
    cfg = make_config("cartpole", "tiny", 1, {"ppo.num_iterations": 2, "ppo.checkpoint_every": 2})
    cfg = dataclasses.replace(cfg, init_from=str(source))
    out = tmp_path / "warm"
    result = train_expert(cfg, out, show_progress=False)
    src = load_expert(source)
    first = load_snapshots(out)[0]
    assert first.iteration == 0
    for a, b in zip(jax.tree.leaves((src.params, src.obs_stats)), jax.tree.leaves((first.params, first.obs_stats))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((out / "config.json").read_text())["init_from"] == str(source)
    # Two iterations from scratch barely beat a random policy; from the expert, it still balances.
    assert result.metrics["expert_return_mean"] > 0.8 * source_result.metrics["expert_return_mean"]
    # A source with other networks, or none, is a clear error before any training.
    other = dataclasses.replace(make_config("cartpole", "tiny", 1, {"ppo.actor_hidden": [8]}), init_from=str(source))
    with pytest.raises(CheckpointError, match="do not match"):
        train_expert(other, tmp_path / "other", show_progress=False)
    missing = dataclasses.replace(cfg, init_from=str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="does not exist"):
        train_expert(missing, tmp_path / "missing", show_progress=False)
    assert not (tmp_path / "other").exists() and not (tmp_path / "missing").exists()  # nothing left behind


def test_half_written_checkpoint_is_ignored(tiny_expert, tmp_path):
    from simdist.rl.policy import load_snapshots

    _, out = tiny_expert
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # What orbax leaves behind when killed mid-write: a temporary folder, never a numbered one.
    shutil.copytree(copy / "snapshots" / "40", copy / "snapshots" / "60.orbax-checkpoint-tmp-1234")
    assert [s.iteration for s in load_snapshots(copy)] == [0, 20, 40]


def test_mismatched_or_missing_checkpoints_raise_clear_errors(tiny_expert, tmp_path):
    from simdist.pipelines.train_expert import make_config, train_expert
    from simdist.rl.policy import load_expert

    _, out = tiny_expert
    with pytest.raises(CheckpointError, match="does not exist"):
        load_expert(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not 'quadruped'"):
        load_expert(out, robot="quadruped")
    # A run directory cannot be resumed with another config.
    other = make_config("cartpole", "tiny", seed=5)
    with pytest.raises(CheckpointError, match="another config"):
        train_expert(other, out, show_progress=False)
    # A damaged config is reported, not a traceback.
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_expert(broken)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "simdist.cli.main", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def _assert_one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_errors_are_one_line(tiny_expert, tmp_path):
    _, out = tiny_expert
    _assert_one_line_error(_cli("train-expert", "--robot", "nosuchrobot", "--out", str(tmp_path / "x")), "unknown robot")
    _assert_one_line_error(_cli("eval-expert", "--expert", str(tmp_path / "missing")), "does not exist")
    _assert_one_line_error(_cli("train-expert", "--preset", "tiny", "--out", str(tmp_path / "warm"), "--init-from",
                                str(tmp_path / "missing")), "does not exist")  # fmt: skip
    # A checkpoint trained for another robot.
    other = tmp_path / "other"
    shutil.copytree(out, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["robot"] = "quadruped"
    (other / "config.json").write_text(json.dumps(cfg))
    _assert_one_line_error(_cli("eval-expert", "--expert", str(other), "--robot", "cartpole"), "not 'cartpole'")
    _assert_one_line_error(_cli("eval-expert", "--expert", str(out), "--robot", "quadruped"), "not 'quadruped'")
    _assert_one_line_error(_cli("deploy", "--robot", "cartpole"), "ships no pretrained world model")
    # A --set value of the wrong type stops before anything is written.
    _assert_one_line_error(_cli("train-expert", "--preset", "tiny", "--out", str(tmp_path / "typed"), "--set",
                                "ppo.num_iterations=ten"), "config key 'ppo.num_iterations' takes int, got 'ten'")  # fmt: skip
    assert not (tmp_path / "typed").exists()


def test_set_overrides_are_converted_and_type_checked():
    from simdist.pipelines.train_expert import make_config

    cfg = make_config("quadruped", "tiny", seed=0, overrides={"ppo.num_iterations": 7, "env.slope_range_deg": 6,
                                                              "env.friction_range": [0.3, 1]})  # fmt: skip
    assert cfg.ppo.num_iterations == 7
    assert cfg.env.slope_range_deg == 6.0 and isinstance(cfg.env.slope_range_deg, float)
    assert cfg.env.friction_range == (0.3, 1.0)
    for overrides, message in [
        ({"ppo.num_iterations": 1.5}, "'ppo.num_iterations' takes int, got 1.5"),
        ({"ppo.num_iterations": True}, "'ppo.num_iterations' takes int, got True"),
        ({"env.friction_range": [0.1, 0.5, 0.9]}, r"'env.friction_range' takes tuple\[float, float\]"),
        ({"env.nope": 1}, "unknown config key 'env.nope'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_config("quadruped", "tiny", seed=0, overrides=overrides)


def test_cli_lists_stages_and_robots():
    proc = _cli("--help")
    for cmd in ("train-expert", "generate-data", "distill", "finetune", "deploy", "robots"):
        assert cmd in proc.stdout
    proc = _cli("robots")
    assert proc.returncode == 0
    assert "cartpole" in proc.stdout and "privileged obs (10)" in proc.stdout and "deployable obs (5)" in proc.stdout


def test_cli_run_killed_mid_training_resumes(tmp_path):
    """SIGKILL the real CLI after its first checkpoint; the same command then finishes the run."""
    import os
    import signal
    import time

    from tests.conftest import _CACHE

    out = tmp_path / "killed"
    args = [
        sys.executable, "-m", "simdist.cli.main", "train-expert", "--preset", "tiny", "--out", str(out),
        "--set", "ppo.num_iterations=400", "--set", "ppo.checkpoint_every=2", "--no-progress",
    ]
    env = dict(os.environ, SIMDIST_JAX_CACHE=str(_CACHE))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            steps = [p for p in (out / "checkpoints").glob("*") if p.name.isdigit()] if out.exists() else []
            if steps:
                break
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    from simdist.checkpointing import Checkpoints

    saved = Checkpoints(out / "checkpoints", create=False).latest_step()
    assert saved is not None and saved >= 2
    # Finish quickly: same config, but this invocation stops after two more iterations.
    from simdist.pipelines.train_expert import make_config, train_expert

    cfg = make_config("cartpole", "tiny", 0, {"ppo.num_iterations": 400, "ppo.checkpoint_every": 2})
    result = train_expert(cfg, out, show_progress=False, stop_after=2)
    assert result.started_at >= saved and result.iteration == result.started_at + 2


def test_diverged_training_stops_with_clear_error(tmp_path):
    from simdist.errors import TrainingDivergedError
    from simdist.pipelines.train_expert import make_config, train_expert

    cfg = make_config(
        "cartpole", "tiny", 0,
        {"ppo.num_iterations": 4, "ppo.checkpoint_every": 1, "ppo.learning_rate": 1e38, "ppo.desired_kl": None},
    )
    with pytest.raises(TrainingDivergedError, match="diverged"):
        train_expert(cfg, tmp_path / "nan", show_progress=False)
    # Nothing non-finite was saved: every snapshot on disk holds finite parameters.
    from simdist.rl.policy import load_snapshots

    for snap in load_snapshots(tmp_path / "nan"):
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(snap.params))
