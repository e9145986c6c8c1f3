"""`simdist eval-expert`: return, episode length, falls and velocity tracking of expert snapshots."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from simdist.errors import CheckpointError, ConfigError
from simdist.rl.evaluate import evaluate_expert


def _fresh_run(out, robot: str, overrides: dict, iterations=(0,)):
    """A train-expert run directory holding untrained policy snapshots (no training): the
    config and snapshots exactly as `train_expert` writes them. The snapshot at iteration i
    has its actor's output layer scaled by 1 + i, so snapshots differ."""
    from flax import nnx

    from simdist.checkpointing import Checkpoints
    from simdist.config import to_dict, write_json
    from simdist.pipelines.train_expert import make_config
    from simdist.rl.normalizer import RunningStats
    from simdist.rl.policy import SNAPSHOT_KIND, snapshot_state
    from simdist.rl.ppo import make_actor_critic
    from simdist.robots import get_robot

    cfg = make_config(robot, "tiny", 0, overrides)
    out.mkdir(parents=True)
    write_json(out / "config.json", to_dict(cfg))
    task = get_robot(robot).make_task(cfg.env)
    n_obs = len(task.privileged_obs_names)
    _, params = nnx.split(make_actor_critic(n_obs, task.action_size, cfg.ppo, cfg.seed))
    snaps = Checkpoints(out / "snapshots")
    for it in iterations:
        p = jax.tree.map(lambda x: x * (1.0 + it), params)
        meta = {"config": to_dict(cfg), "robot": robot, "kind": SNAPSHOT_KIND, "iteration": it, "env_steps": 0,
                "final": it == iterations[-1], "train_return": None}  # fmt: skip
        snaps.save(it, snapshot_state(p, RunningStats.create(n_obs)), meta)
    snaps.close()
    return cfg


def _direct_rollout(env, snap, n, key, vx_index=None):
    """Step `env.batch_step` from Python, one control step at a time; measure each env's first
    episode independently of `simdist.rl.evaluate`."""
    step = jax.jit(env.batch_step)
    policy = jax.jit(snap.policy_fn())
    st = jax.jit(env.batch_reset, static_argnums=1)(key, n)
    xy0, obs0 = np.asarray(st.data.qpos[:, :2]), np.asarray(st.deployable_obs)
    alive = np.ones(n, bool)
    ret, length, fell = np.zeros(n), np.zeros(n, int), np.zeros(n, bool)
    err, steps, xy = np.zeros(n), np.zeros(n, int), xy0.copy()
    for _ in range(env.config.episode_length):
        st = step(st, policy(st.privileged_obs))
        done, term = np.asarray(st.done), np.asarray(st.terminated)
        ret += np.where(alive, np.asarray(st.reward), 0.0)
        length += alive
        fell |= alive & term
        live = alive & ~done
        if vx_index is not None:
            err += np.where(live, np.abs(np.asarray(st.deployable_obs[:, vx_index]) - 0.5), 0.0)
            steps += live
            xy = np.where(live[:, None], np.asarray(st.data.qpos[:, :2]), xy)
        alive = live
    return {"return": ret, "length": length, "fell": fell, "vx_abs_error": err / np.maximum(steps, 1),
            "distance": np.linalg.norm(xy - xy0, axis=-1), "obs0": obs0}  # fmt: skip


def test_trained_expert_beats_untrained_snapshot_and_matches_a_direct_rollout(tiny_expert):
    from simdist.envs import MjxEnv
    from simdist.rl.policy import load_snapshots
    from simdist.robots import get_robot

    _, out = tiny_expert
    rows = evaluate_expert(out, "cartpole", episodes=6, snapshots=[0, 40], seed=3, random_baseline=True)
    untrained, expert, rand = rows
    assert [r["iteration"] for r in rows] == [0, 40, None]
    assert [r["policy"] for r in rows] == ["snapshot", "expert", "random"]
    assert expert["return_mean"] > untrained["return_mean"] + 10.0
    assert expert["return_mean"] > rand["return_mean"] + 10.0
    for r in rows:
        assert r["command"] is None and "vx_mae" not in r and "distance_mean" not in r  # no command
        assert len(r["per_episode"]["return"]) == 6
    json.dumps(rows)  # JSON-serialisable as is

    # The report is what stepping the env by hand gives, on the same seed. (The swing-up is
    # chaotic: the last bits differ between the scanned and the step-by-step programs and grow
    # over 200 steps, so returns agree closely, not exactly.)
    snap = load_snapshots(out)[-1]
    env = MjxEnv(get_robot("cartpole").make_task(snap.config.env))
    ref = _direct_rollout(env, snap, 6, jax.random.key(3))
    np.testing.assert_allclose(expert["per_episode"]["return"], ref["return"], rtol=3e-2)
    assert expert["return_mean"] == pytest.approx(ref["return"].mean(), rel=1e-2)
    assert expert["per_episode"]["length"] == ref["length"].tolist() == [env.config.episode_length] * 6
    assert expert["falls"] == int(ref["fell"].sum()) == 0  # the cartpole has no failure termination
    assert evaluate_expert(out, episodes=6, seed=3)[0]["return_mean"] == pytest.approx(expert["return_mean"])


def test_quadruped_fixed_command_reports_tracking_falls_and_distance(tmp_path):
    from simdist.envs import MjxEnv
    from simdist.rl.evaluate import fixed_command_config, forward_velocity_index
    from simdist.rl.policy import load_snapshots
    from simdist.robots import get_robot

    # Untrained snapshots on short episodes; a heavy payload in part of the episodes makes
    # some of them collapse, so there are falls to count.
    run = tmp_path / "quad"
    _fresh_run(run, "quadruped", {"env.episode_length": 40, "env.payload_range": (-1.0, 60.0)}, (0, 4))
    n = 6
    rows = evaluate_expert(run, "quadruped", episodes=n, command=(0.5, 0.0, 0.0), snapshots="all", seed=1)
    assert [r["iteration"] for r in rows] == [0, 4]
    for r in rows:
        assert r["command"] == [0.5, 0.0, 0.0]
        per = r["per_episode"]
        for k in ("return", "length", "fell", "vx_abs_error", "alive_steps", "distance"):
            assert len(per[k]) == n, k
        assert np.all(np.isfinite(per["vx_abs_error"])) and np.all(np.isfinite(per["distance"]))
        assert np.all(np.asarray(per["distance"]) >= 0.0) and np.isfinite(r["vx_mae"]) and r["vx_mae"] >= 0.0
        assert r["vx_mae"] == pytest.approx(np.mean(per["vx_abs_error"]))
        assert r["falls"] == sum(per["fell"])
        # An episode that fell ended before the time limit; one that did not, at it.
        for fell, length in zip(per["fell"], per["length"]):
            assert (length < 40) if fell else (length == 40)

    # Falls, tracking error and distance are what stepping the env by hand gives.
    snaps = load_snapshots(run)
    env_cfg = fixed_command_config(snaps[-1].config.env, type(get_robot("quadruped").make_task()), (0.5, 0.0, 0.0))
    env = MjxEnv(get_robot("quadruped").make_task(env_cfg))
    ref = _direct_rollout(env, snaps[-1], n, jax.random.key(1), forward_velocity_index(env.task))
    got = rows[-1]["per_episode"]
    assert rows[-1]["falls"] == int(ref["fell"].sum()) > 0
    assert got["fell"] == ref["fell"].tolist() and got["length"] == ref["length"].tolist()
    np.testing.assert_allclose(got["vx_abs_error"], ref["vx_abs_error"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["distance"], ref["distance"], rtol=1e-4, atol=1e-5)
    # The policy saw the fixed command from the first step.
    idx = [env.task.deployable_obs_names.index(c) for c in ("cmd_vx", "cmd_vy", "cmd_wz")]
    np.testing.assert_array_equal(ref["obs0"][:, idx], np.tile([0.5, 0.0, 0.0], (n, 1)))


def test_bad_requests_raise_clear_errors(tiny_expert, tmp_path):
    _, out = tiny_expert
    with pytest.raises(ConfigError, match="takes no command"):
        evaluate_expert(out, command=(0.5, 0.0, 0.0))
    with pytest.raises(ConfigError, match="no snapshot at iteration 7"):
        evaluate_expert(out, snapshots=[7])
    with pytest.raises(ConfigError, match="episodes"):
        evaluate_expert(out, episodes=0)
    with pytest.raises(ConfigError, match="unknown config key 'slope'"):
        evaluate_expert(out, env_overrides={"slope": 1.0})
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate_expert(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not 'quadruped'"):
        evaluate_expert(out, "quadruped")
    run = tmp_path / "quad"
    _fresh_run(run, "quadruped", {})
    with pytest.raises(ConfigError, match="command of 3 values"):
        evaluate_expert(run, command=(0.5, 0.0))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "simdist.cli.main", *args], capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _assert_one_line_error(proc, needle):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_reports_a_table_and_writes_eval_json(tiny_expert, tmp_path):
    from typer.testing import CliRunner

    from simdist.cli.main import app

    _, out = tiny_expert
    report = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["eval-expert", "--robot", "cartpole", "--expert", str(out), "--last", "2",
                                   "--episodes", "4", "--seed", "3", "--json", str(report),
                                   "--set", "episode_length=150"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "4 episodes of 150 steps" in lines[0] and "episode_length=150" in lines[0]
    assert "return" in lines[1] and "falls" in lines[1] and "vx MAE" not in lines[1]
    assert lines[2].split("|")[0].strip() == "20" and lines[3].split("|")[0].strip() == "40 (expert)"
    assert lines[4].split("|")[0].strip() == "random" and lines[4].split("|")[3].strip() == "0/4"
    data = json.loads(report.read_text())
    assert data["robot"] == "cartpole" and data["episodes"] == 4 and data["env_overrides"] == {"episode_length": 150}
    assert all(r["episode_length_mean"] <= 150 for r in data["snapshots"])
    assert [r["iteration"] for r in data["snapshots"]] == [20, 40, None]
    assert not (out / "eval.json.tmp").exists() and not report.with_suffix(".json.tmp").exists()


def test_cli_errors_are_one_line(tiny_expert, tmp_path):
    _, out = tiny_expert
    _assert_one_line_error(_cli("eval-expert", "--expert", str(tmp_path / "missing")), "does not exist")
    _assert_one_line_error(_cli("eval-expert", "--robot", "cartpole", "--expert", str(out), "--command", "0.5,0,0"),
                           "takes no command")  # fmt: skip
    _assert_one_line_error(_cli("eval-expert", "--expert", str(out), "--command", "fast"), "comma-separated numbers")
    assert not (out / "eval.json").exists()  # nothing written on error
