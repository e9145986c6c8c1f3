"""Deploy: controllers online against the sim-real robot, latency, safety stops, real-data recording."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from simdist.backends import make_backend
from simdist.backends.base import RobotInterface
from simdist.data.dataset import Dataset, DatasetSpec
from simdist.errors import CheckpointError, ConfigError, DatasetError, PlannerError
from simdist.models.io import load_model
from simdist.pipelines.deploy import DeployConfig, DeployInterrupted, deploy, episode_seed, make_controller
from simdist.planning.controller import (
    PlannerController,
    ZeroController,
    world_model_plan_model,
)
from simdist.planning.mppi import get_preset, init_plan_state
from simdist.robots import get_robot

NO_CMD = np.zeros((0,), np.float32)


def _cfg(**kw) -> DeployConfig:
    base = dict(robot="cartpole", episodes=1, episode_length=30, mppi="tiny", gap="none", seed=0)
    return DeployConfig(**(base | kw))


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.strip(), msg
    return msg


def _replay(actions: np.ndarray, seed: int, gap="none") -> np.ndarray:
    """The observations a fresh sim-real robot gives when these actions are sent from reset."""
    with make_backend("sim-real", "cartpole", gap=gap, seed=0) as b:
        obs = [b.reset(seed=seed)]
        for a in actions[:-1]:
            obs.append(b.step(a))
    return np.stack(obs)


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model[1].out


# ---- the planner against sim-real, recording real data -------------------------------------
def test_planner_deploy_records_whole_real_episodes_and_appends(model_dir, tmp_path):
    rec = tmp_path / "real"
    res = deploy(_cfg(episodes=2, episode_length=60), model_dir=model_dir, record=rec, show_progress=False)
    assert res.controller == "planner"
    assert len(res.steps) == 2 and all(1 <= s <= 60 for s in res.steps)
    assert all(r is not None and np.isfinite(r) for r in res.returns)  # probe ground truth (evaluation only)
    lat = res.latency_ms
    assert lat["n"] == sum(res.steps) and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert res.recorded_transitions == sum(res.steps) and res.recorded_episodes == 2
    assert res.stopped_early is None and res.missed_deadlines == 0  # lock-step: no deadlines
    # Per-episode planner diagnostics: the elite std stays within MPPI's clip, and the best
    # return is at least the elites' mean return at every step.
    mcfg = get_preset(_cfg().mppi)
    for r in res.episodes:
        d = r.controller_diag
        assert mcfg.min_std - 1e-6 <= d["mean_std_min"] <= d["mean_std_mean"] <= d["mean_std_max"] <= mcfg.max_std + 1e-6
        assert d["best_return_mean"] >= d["mean_elite_return_mean"] - 1e-5 and d["nonfinite_returns_max"] == 0
        assert not any(k.startswith("finite") for k in d)

    ds = Dataset.open(rec)
    assert ds.spec.source == "real" and not ds.spec.labels and ds.spec.robot == "cartpole"
    assert ds.spec.obs_names == tuple(get_robot("cartpole").task_cls.deployable_obs_names)
    assert set(ds.field_names) == {"obs", "action"}  # no reward, value or flags: none invented
    assert ds.n_transitions == sum(res.steps)
    ep = ds.episodes()
    np.testing.assert_array_equal(ep[:, 1], res.steps)  # whole episodes
    np.testing.assert_array_equal(ep[:, 0], [0, res.steps[0]])
    np.testing.assert_array_equal(ep[:, 2], [-1, -1])
    obs, act = ds.read("obs"), ds.read("action")
    assert np.all(np.isfinite(act)) and np.all(np.abs(act) <= 1.0)
    assert np.std(act) > 0  # the planner does act
    # Row i = (o_i, a_i): replaying the recorded actions on a fresh robot gives the recorded obs.
    for i, (start, length, _, terminated) in enumerate(ep):
        assert terminated == 0
        sl = slice(start, start + length)
        np.testing.assert_allclose(_replay(act[sl], episode_seed(0, i)), obs[sl], atol=1e-5)

    # A second run appends to the same dataset.
    res2 = deploy(_cfg(episodes=1, episode_length=20, seed=1), model_dir=model_dir, record=rec, show_progress=False)
    ds = Dataset.open(rec)
    assert ds.n_episodes == 3 and ds.n_transitions == sum(res.steps) + sum(res2.steps)
    assert ds.episodes()[2, 0] == sum(res.steps)


def test_recording_into_a_mismatched_dataset_is_refused(tmp_path):
    rec = tmp_path / "sim"
    Dataset.create(rec, DatasetSpec("cartpole", "sim", 0.02, 5, 1, labels=True)).close()
    with pytest.raises(DatasetError) as e:
        deploy(_cfg(), controller=ZeroController(1), record=rec, show_progress=False)
    assert "source" in _one_line(e.value)


# ---- the controller itself ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planner(model_dir):
    model, _ = load_model(model_dir, "cartpole")
    return PlannerController(model, get_preset("tiny"), -1.0, 1.0, seed=0)


def test_history_is_first_obs_padding_then_the_transitions_before_t(planner):
    h = planner.history_len
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(h + 3, 5)).astype(np.float32)
    planner.reset(observations[0], NO_CMD)
    acted: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(h + 3):
        hist_obs, hist_act = planner.history
        pairs = [(observations[0], np.zeros(1, np.float32))] * h + acted  # padding, then (o_j, a_j)
        np.testing.assert_array_equal(hist_obs, np.stack([p[0] for p in pairs[-h:]]))
        np.testing.assert_array_equal(hist_act, np.stack([p[1] for p in pairs[-h:]]))
        a, diag = planner.act(observations[k], NO_CMD)
        assert a.shape == (1,) and np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0)
        assert diag["finite"] == 1.0 and all(isinstance(v, float) for v in diag.values())
        if k == 2:  # a wrapper perturbed this action: the history holds the executed one
            a = np.array([0.25], np.float32)
            planner.set_executed_action(a)
        acted.append((observations[k], a))
    planner.reset(observations[1], NO_CMD)  # a new episode forgets the old history
    with pytest.raises(PlannerError, match="act"):
        planner.set_executed_action(np.zeros(1))
    hist_obs, hist_act = planner.history
    np.testing.assert_array_equal(hist_obs, np.repeat(observations[1][None], h, 0))
    np.testing.assert_array_equal(hist_act, np.zeros((h, 1)))


def test_warmup_compiles_the_only_program_the_episode_uses(model_dir):
    model, _ = load_model(model_dir, "cartpole")
    ctrl = PlannerController(model, get_preset("tiny"), -1.0, 1.0)
    ctrl.warmup(5, 0)
    assert ctrl._step_fn._cache_size() == 1
    obs = np.array([0.0, -1.0, 0.0, 0.0, 0.0], np.float32)
    for _ in range(2):
        ctrl.reset(obs, NO_CMD)
        for _ in range(3):  # a cold state, then carried states: no recompilation mid-episode
            ctrl.act(obs, NO_CMD)
    assert ctrl._step_fn._cache_size() == 1


def test_plan_state_is_carried_between_steps_and_cold_at_reset(planner, monkeypatch):
    calls = []
    inner = planner._step_fn

    def spy(params, hist_obs, hist_act, obs, command, prev, key):
        out = inner(params, hist_obs, hist_act, obs, command, prev, key)
        calls.append((jax.device_get(prev), jax.device_get(out[1])))
        return out

    monkeypatch.setattr(planner, "_step_fn", spy)
    cold = init_plan_state(planner.mppi, 1, -1.0, 1.0)
    obs = np.array([0.0, -1.0, 0.0, 0.0, 0.0], np.float32)
    for episode in range(2):
        planner.reset(obs, NO_CMD)
        for _ in range(3):
            planner.act(obs, NO_CMD)
    assert len(calls) == 6
    for i, (prev, new) in enumerate(calls):
        if i % 3 == 0:  # first step of an episode: the cold state
            np.testing.assert_array_equal(prev.mean, cold.mean)
            np.testing.assert_array_equal(prev.std, cold.std)
        else:  # warm start: exactly the state the previous step returned
            np.testing.assert_array_equal(prev.mean, calls[i - 1][1].mean)
            np.testing.assert_array_equal(prev.std, calls[i - 1][1].std)
    assert not np.array_equal(calls[1][0].mean, cold.mean)  # the carried plan is not the cold one


def test_non_finite_plan_raises_planner_error(model_dir):
    model, _ = load_model(model_dir, "cartpole")
    ctrl = PlannerController(model, get_preset("tiny"), -1.0, 1.0)
    ctrl.params = jax.tree.map(lambda x: x * np.nan, ctrl.params)
    obs = np.array([0.0, -1.0, 0.0, 0.0, 0.0], np.float32)
    ctrl.reset(obs, NO_CMD)
    with pytest.raises(PlannerError) as e:
        ctrl.act(obs, NO_CMD)
    assert "non-finite action at step 0" in _one_line(e.value)


def test_plan_model_vmaps_samples_under_one_context(model_dir):
    model, _ = load_model(model_dir, "cartpole")
    pm, params = world_model_plan_model(model)
    graphdef = nnx.split(model)[0]
    h, zs = model.cfg.history, model.cfg.latent_size
    obs = np.array([0.1, -1.0, 0.0, 0.0, 0.0], np.float32)
    context = jax.jit(lambda p, ho, ha, o: nnx.merge(graphdef, p).context(ho, ha, o))
    ctx = context(params, np.repeat(obs[None], h, 0), np.zeros((h, 1), np.float32), obs)
    acts = np.random.default_rng(0).uniform(-1, 1, size=(3, 5, 1)).astype(np.float32)
    z = jax.jit(pm.dynamics)(params, ctx, acts)
    assert z.shape == (3, 5, zs)
    one = jax.jit(lambda p, c, a: nnx.merge(graphdef, p).dynamics(c, a))
    np.testing.assert_allclose(z[1], one(params, ctx, acts[1]), atol=1e-5)  # each sample on its own
    shape = lambda f, *a: jax.eval_shape(f, params, *a).shape  # noqa: E731
    assert shape(pm.reward, z, acts, z, NO_CMD) == (3, 5)
    assert shape(pm.value, z[:, -1], NO_CMD) == (3,)
    assert shape(pm.prior, ctx, NO_CMD) == (model.cfg.horizon, 1)
    assert pm.z0(ctx).shape == (zs,)


# ---- safety: errors stop the robot and keep the data ---------------------------------------
@pytest.fixture
def stop_spy(monkeypatch):
    reasons = []
    original = RobotInterface.stop

    def stop(self, reason="stop requested"):
        if self.connected and not self._stopped:
            reasons.append(reason)
        return original(self, reason)

    monkeypatch.setattr(RobotInterface, "stop", stop)
    return reasons


def test_controller_error_stops_robot_and_saves_episodes(model_dir, tmp_path, monkeypatch, stop_spy):
    k = 7
    original_act = PlannerController.act
    episode = {"n": 0}
    original_reset = PlannerController.reset

    def reset(self, obs, command):
        episode["n"] += 1
        return original_reset(self, obs, command)

    def act(self, obs, command):
        if episode["n"] == 2 and self.step == k:
            raise RuntimeError("boom\nsecond line")
        return original_act(self, obs, command)

    monkeypatch.setattr(PlannerController, "reset", reset)
    monkeypatch.setattr(PlannerController, "act", act)
    rec = tmp_path / "real"
    with pytest.raises(PlannerError) as e:
        deploy(_cfg(episodes=3, episode_length=25), model_dir=model_dir, record=rec, show_progress=False)
    msg = _one_line(e.value)
    assert "RuntimeError" in msg and "boom second line" in msg and "robot stopped" in msg
    assert stop_spy[0] == "controller error"  # stopped first, before the dataset work and close
    ds = Dataset.open(rec)  # closed (openable for writing again) and holding episode 1 + partial 2
    ds = Dataset.open(rec, writable=True)
    ds.close()
    np.testing.assert_array_equal(ds.episodes()[:, 1], [25, k])
    np.testing.assert_array_equal(ds.episodes()[:, 3], [0, 1])
    assert ds.n_transitions == 25 + k


class _Raising(ZeroController):
    """Zero actions, then `exc` (or a NaN action) at step k of episode 2."""

    def __init__(self, exc, k):
        super().__init__(1)
        self.exc, self.k, self.episode, self.step = exc, k, 0, 0

    def reset(self, obs, command):
        self.episode += 1
        self.step = 0

    def act(self, obs, command):
        if self.episode == 2 and self.step == self.k:
            if self.exc is None:
                return np.array([np.nan], np.float32), {}
            raise self.exc
        self.step += 1
        return np.zeros(1, np.float32), {}


@pytest.mark.parametrize(
    "exc", [PlannerError("planner produced a non-finite action at step 4"), KeyboardInterrupt(), None],
    ids=["planner-error", "ctrl-c", "nan-action"],
)
def test_any_failure_becomes_one_line_planner_error_with_data_saved(exc, tmp_path, stop_spy):
    """An error is a one-line PlannerError, a Ctrl-C a DeployInterrupted (still a
    KeyboardInterrupt); both carry the finished episode and leave the recording whole."""
    rec = tmp_path / "real"
    expected = DeployInterrupted if isinstance(exc, KeyboardInterrupt) else PlannerError
    with pytest.raises(expected) as e:
        deploy(_cfg(episodes=3, episode_length=12), controller=_Raising(exc, 4), record=rec, show_progress=False)
    msg = _one_line(e.value)
    assert "robot stopped" in msg and "saved 2 episode(s), 16 transitions" in msg
    partial = e.value.partial_result
    assert partial.steps == [12] and len(partial.episodes) == 1 and partial.recorded_transitions == 16
    assert stop_spy[0] == "controller error"
    ds = Dataset.open(rec)
    np.testing.assert_array_equal(ds.episodes()[:, 1], [12, 4])
    np.testing.assert_array_equal(ds.episodes()[:, 3], [0, 1])


# ---- the expert on deployable observations --------------------------------------------------
def test_privileged_from_deployable_is_nominal_offsets():
    task = get_robot("cartpole").make_task()
    dep = np.arange(10, dtype=np.float32).reshape(2, 5)
    priv = task.privileged_from_deployable(dep)
    assert isinstance(priv, np.ndarray) and priv.shape == (2, 10)
    np.testing.assert_array_equal(priv[:, :5], dep)
    np.testing.assert_array_equal(priv[:, 5:], 0.0)
    assert isinstance(task.privileged_from_deployable(jax.numpy.asarray(dep[0])), jax.Array)


def test_expert_on_the_robot_clearly_beats_doing_nothing(tiny_expert, tmp_path):
    _, run_dir = tiny_expert
    cfg = _cfg(episode_length=150)
    expert = deploy(cfg, expert_dir=run_dir, record=tmp_path / "real", show_progress=False)
    zero = deploy(cfg, controller=ZeroController(1), show_progress=False)
    assert expert.controller == "expert" and zero.steps == [150]
    assert expert.episodes[0].controller_diag == {}  # a policy has no planner diagnostics
    # The tiny expert swings the pole up but rides the cart into the rail end (the MJX training
    # env has no rail-impact limit): the robot's safety stop may end its episode early. Even
    # so it earns far more than doing nothing over a whole episode.
    assert expert.returns[0] > max(1.0, 5 * zero.returns[0]), (expert.returns, zero.returns)
    stopped = expert.steps[0] < 150
    assert (expert.episodes[0].safety_stop is not None) == stopped
    ep = Dataset.open(tmp_path / "real").episodes()
    np.testing.assert_array_equal(ep[:, 1:], [[expert.steps[0], -1, int(stopped)]])  # terminated = safety stop


# ---- artifacts and config ------------------------------------------------------------------
def test_model_or_expert_for_another_robot_is_one_line_checkpoint_error(model_dir, tiny_expert, tmp_path):
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    meta = json.loads((other / "model.json").read_text())
    meta["robot"] = "quadruped"
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        deploy(_cfg(), model_dir=other, show_progress=False)
    assert "quadruped" in _one_line(e.value)

    expert = tmp_path / "expert"
    shutil.copytree(tiny_expert[1], expert)
    cfg = json.loads((expert / "config.json").read_text())
    cfg["robot"] = "quadruped"
    (expert / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        deploy(_cfg(), expert_dir=expert, show_progress=False)
    assert "quadruped" in _one_line(e.value)


def test_config_errors(model_dir, tiny_expert):
    with pytest.raises(ConfigError):
        deploy(_cfg(), show_progress=False)
    with pytest.raises(ConfigError):
        deploy(_cfg(), model_dir=model_dir, expert_dir=tiny_expert[1], show_progress=False)
    # An explicit horizon longer than the model's (8) is an error; a preset's is cut to the model's.
    with pytest.raises(ConfigError) as e:
        deploy(_cfg(mppi="default", mppi_horizon=10), model_dir=model_dir, show_progress=False)
    assert "horizon" in _one_line(e.value)
    with pytest.raises(ConfigError):
        deploy(_cfg(mppi="nope"), model_dir=model_dir, show_progress=False)


def test_mppi_overrides_reach_the_planner_and_bad_ones_are_one_line_errors(model_dir):
    with make_backend("sim-real", "cartpole", gap="none", seed=0) as b:
        spec = b.spec
    ctl = make_controller(_cfg(mppi_overrides=(("noise_beta", 2), ("init_std", 1.0), ("samples", 32))), spec,
                          model_dir=model_dir)
    want = dataclasses.replace(get_preset("tiny"), noise_beta=2.0, init_std=1.0, samples=32)
    assert ctl.mppi == want and isinstance(ctl.mppi.noise_beta, float)
    # A horizon given as an override is explicit, like --mppi-horizon: longer than the model's is refused.
    for bad, needle in [((("nope", 1),), "nope"), ((("samples", 1.5),), "samples"), ((("init_std", "x"),), "init_std"),
                        ((("elites", 10_000),), "elites"), ((("horizon", 99),), "horizon")]:
        with pytest.raises(ConfigError) as e:
            make_controller(_cfg(mppi_overrides=bad), spec, model_dir=model_dir)
        assert needle in _one_line(e.value)


def test_real_time_mode_reports_missed_deadlines():
    class FakeClock:  # moves only when someone sleeps or computes
        now = 100.0

        def __call__(self):
            return self.now

        def sleep(self, s):
            self.now += max(s, 0.0)

    clock = FakeClock()

    class Slow(ZeroController):
        def act(self, obs, command):
            clock.now += 0.05  # 50 ms of "compute" against a 20 ms control period
            return super().act(obs, command)

    res = deploy(_cfg(mode="real-time", episode_length=5), controller=Slow(1), show_progress=False,
                 backend_kwargs={"clock": clock, "sleep": clock.sleep})
    assert res.steps == [5] and res.missed_deadlines == 5 and res.episodes[0].missed_deadlines == 5
