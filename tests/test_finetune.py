"""Stage 4 (finetune) on data from a SHIFTED robot: frozen parts stay bit-identical, the ReDRAW
residual starts as the zero-shot model, held-out latent error falls, bad inputs fail in one line,
the output is a model directory, `max_transitions` limits the data, and resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from simdist.errors import ConfigError, DatasetError, TrainingDivergedError

REAL_EPISODES = 14
REAL_STEPS = 150
ACTION_NOISE = 0.3


def record_real_data(path: Path, expert_dir: Path, *, gap: str = "default", episodes: int = REAL_EPISODES,
                     steps: int = REAL_STEPS, noise: float = ACTION_NOISE, seed: int = 0) -> Path:
    """Drive the sim-real cartpole (with a reality gap) with the tiny expert plus Gaussian action
    noise; record what a real robot gives: deployable obs and the executed (clamped) actions."""
    from simdist.backends import make_backend
    from simdist.data.dataset import Dataset, DatasetSpec
    from simdist.rl.policy import load_expert

    policy = jax.jit(load_expert(expert_dir).policy_fn())
    rng = np.random.default_rng(seed)
    obs, act, lengths = [], [], []
    with make_backend("sim-real", "cartpole", gap=gap, mode="lock-step", seed=seed) as robot:
        spec = robot.spec
        for ep in range(episodes):
            o = robot.reset(seed=seed * 1000 + ep)
            n = 0
            for _ in range(steps):
                privileged = np.concatenate([o, np.zeros(5, np.float32)])  # nominal parameter offsets
                a = np.asarray(policy(privileged)) + noise * rng.standard_normal(spec.action_size)
                a = np.clip(a, spec.action_low, spec.action_high).astype(np.float32)
                obs.append(o)
                act.append(a)
                n += 1
                o = robot.step(a)
                if robot.done():
                    break
            lengths.append(n)
    ds = Dataset.create(path, DatasetSpec(robot="cartpole", source="real", control_dt=spec.control_dt, obs_size=5,
                                          action_size=1, labels=False, obs_names=spec.obs_names))
    n_ep = len(lengths)
    ds.append_episodes({"obs": np.stack(obs), "action": np.stack(act)}, np.asarray(lengths),
                       np.full(n_ep, -1, np.int64), np.zeros(n_ep, np.int64))
    ds.close()
    return path


def _small_dataset(path: Path, *, robot="cartpole", obs_size=5, control_dt=0.02, lengths=(150, 150, 150)) -> Path:
    from simdist.data.dataset import Dataset, DatasetSpec

    rng = np.random.default_rng(0)
    n = int(sum(lengths))
    ds = Dataset.create(path, DatasetSpec(robot=robot, source="real", control_dt=control_dt, obs_size=obs_size,
                                          action_size=1, labels=False))
    ds.append_episodes({"obs": rng.standard_normal((n, obs_size)).astype(np.float32),
                        "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32)},
                       np.asarray(lengths), np.full(len(lengths), -1), np.zeros(len(lengths), np.int64))
    ds.close()
    return path


@pytest.fixture(scope="module")
def real_data(tiny_expert, tmp_path_factory):
    return record_real_data(tmp_path_factory.mktemp("real") / "shifted", tiny_expert[1])


@pytest.fixture(scope="module")
def parent_dir(tiny_model):
    return tiny_model[1].out


@pytest.fixture(scope="module")
def finetuned(parent_dir, real_data, tmp_path_factory):
    """Both modes, tiny preset: {mode: FinetuneResult}."""
    from simdist.pipelines.finetune import finetune, make_config

    root = tmp_path_factory.mktemp("finetune")
    return {mode: finetune(make_config("tiny", 0, mode), parent_dir, real_data, root / mode, show_progress=False)
            for mode in ("dynamics", "residual")}


def _split_lengths(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Lengths of the training and held-out episodes of a real dataset, in dataset order. The
    noisy tiny expert may end an episode early on some CPUs, so tests read the lengths instead of
    assuming REAL_STEPS each."""
    from simdist.data.dataset import Dataset
    from simdist.data.windows import heldout_mask
    from simdist.pipelines.finetune import make_config

    ds = Dataset.open(path)
    lengths = ds.episodes()[:, 1].astype(np.int64)
    ds.close()
    held = heldout_mask(len(lengths), make_config("tiny", 0, "dynamics").heldout_fraction)
    return lengths[~held], lengths[held]


def _leaves(model) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


@pytest.mark.parametrize("mode,block", [("dynamics", "dynamics_net"), ("residual", "residual_net")])
def test_frozen_parameters_and_stats_are_bit_identical(finetuned, parent_dir, mode, block):
    from simdist.models.io import load_model

    parent = _leaves(load_model(parent_dir)[0])
    tuned = _leaves(load_model(finetuned[mode].out)[0])
    trainable = {k for k in tuned if f"'{block}'" in k}
    assert trainable and set(tuned) - trainable == set(parent) - trainable
    if mode == "residual":
        assert not trainable & set(parent)  # the residual block is new; nothing else is
    assert any("'norm'" in k for k in parent)  # the normalisation statistics are compared too
    for k in parent:
        if k not in trainable:
            assert np.array_equal(parent[k], tuned[k]), k
    if mode == "dynamics":
        changed = [k for k in trainable if not np.array_equal(parent[k], tuned[k])]
        assert len(changed) == len(trainable)
    else:
        assert np.abs(tuned["['residual_net']['fc2']['kernel']"]).max() > 0  # it left its zero init


def test_residual_starts_as_the_zero_shot_model(finetuned, parent_dir, real_data):
    from simdist.data.dataset import Dataset
    from simdist.data.windows import WindowSampler
    from simdist.models.io import load_model
    from simdist.pipelines.finetune import eval_windows, latent_report, with_residual

    parent, _ = load_model(parent_dir)
    res = with_residual(parent, None)
    assert res.cfg.residual_hidden == parent.cfg.latent_size // 2 and not parent.has_residual
    ds = Dataset.open(real_data)
    b = WindowSampler(ds, parent.cfg.history, parent.cfg.horizon, split="all").sample(16, np.random.default_rng(3))
    outs = []
    for m in (parent, res):
        ctx = m.context(b["hist_obs"], b["hist_act"], b["obs"][:, 0])
        pred = m.predict(ctx, b["act"])
        z = pred["z"]
        outs.append({"z0": ctx["z0"], "memory": ctx["memory"], **pred, "dyn": m.dynamics(ctx, b["act"][:, :5]),
                     "r": m.reward(z[:, 0], b["act"][:, 0], z[:, 1]), "v": m.value(z[:, 3])})
    for k in outs[0]:
        np.testing.assert_array_equal(np.asarray(outs[0][k]), np.asarray(outs[1][k]), err_msg=k)
    # The pipeline's step-0 held-out metric of the residual run is the parent's. The eager
    # outputs above are bit-identical; the jitted metric is compiled once per model structure,
    # and XLA may fuse the residual model's program differently, so allow round-off.
    r = finetuned["residual"].metrics
    np.testing.assert_allclose(r["latent_error_per_step_before"],
                               finetuned["dynamics"].metrics["latent_error_per_step_before"], rtol=1e-6)
    from simdist.pipelines.finetune import split_real_data

    data = split_real_data(ds, parent.cfg.history, parent.cfg.horizon, heldout_fraction=0.2)
    ref = latent_report(parent, eval_windows(data.heldout, 1024))
    assert r["latent_error_before"] == pytest.approx(ref["latent_error_mean"], rel=1e-6)
    hist = [json.loads(x) for x in (finetuned["residual"].out / "history.jsonl").read_text().splitlines()]
    assert hist[0]["step"] == 0 and hist[0]["heldout_latent"] == pytest.approx(ref["latent_error_mean"], rel=1e-6)


@pytest.mark.parametrize("mode", ["dynamics", "residual"])
def test_finetuning_lowers_heldout_latent_error_on_the_shifted_robot(finetuned, parent_dir, real_data, mode):
    from simdist.models.io import load_model
    from simdist.models.world_model import DYNAMICS, count_params

    m = finetuned[mode].metrics
    print(f"\n{mode}: held-out latent {m['latent_error_before']:.4f} -> {m['latent_error_after']:.4f} "
          f"(x{m['latent_error_ratio']:.2f}), {m['trainable_parameters']} trainable, "
          f"{m['train_seconds_this_invocation']} s")
    assert m["latent_error_after"] < 0.8 * m["latent_error_before"]
    # Better at the far end of the horizon too, and better than "the latent stays put" there.
    assert m["latent_error_per_step_after"][-1] < m["latent_error_per_step_before"][-1]
    assert m["latent_error_per_step_after"][-1] < m["latent_error_hold_still_per_step"][-1]
    hist = [json.loads(x) for x in (finetuned[mode].out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 100, 200, 300]
    assert hist[-1]["heldout_latent"] == pytest.approx(m["latent_error_after"], rel=1e-12)
    parent = load_model(parent_dir)[0]
    if mode == "dynamics":
        assert m["trainable_parameters"] == count_params(parent, DYNAMICS)
    else:
        z, a, h = parent.cfg.latent_size, parent.cfg.action_size, parent.cfg.latent_size // 2
        assert m["trainable_parameters"] == (z + a) * h + h + 2 * h + h * z + z  # fc1, LayerNorm, fc2
    # The data report counts exactly the training episodes' steps.
    used = m["real_data"]
    train, held = _split_lengths(real_data)
    assert used["episodes"] == len(train) and used["heldout_episodes"] == len(held)
    assert used["transitions"] == int(train.sum())
    assert used["seconds"] == pytest.approx(0.02 * used["transitions"])
    assert used["episodes"] + used["heldout_episodes"] == REAL_EPISODES
    assert (finetuned[mode].out / "latent_error.png").stat().st_size > 1000


def test_bad_inputs_fail_with_one_line(parent_dir, tmp_path):
    from simdist.pipelines.finetune import finetune, make_config

    cfg = make_config("tiny", 0, "dynamics", {"steps": 2})
    cases = [
        (_small_dataset(tmp_path / "other", robot="quadruped"), "not 'cartpole'"),
        (_small_dataset(tmp_path / "obs4", obs_size=4), "expected \\(5,\\)"),
        (_small_dataset(tmp_path / "dt", control_dt=0.01), "control_dt"),
        (_small_dataset(tmp_path / "one", lengths=(150,)), "at least 2"),
        (_small_dataset(tmp_path / "short", lengths=(6, 150, 150)), "record more"),  # episode 0 is held out
    ]
    for path, match in cases:
        with pytest.raises(DatasetError, match=match) as e:
            finetune(cfg, parent_dir, path, tmp_path / "out", show_progress=False)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="parent model"):
        finetune(cfg, parent_dir, tmp_path / "other", parent_dir, show_progress=False)
    with pytest.raises(ConfigError, match="mode"):
        make_config("tiny", 0, "everything")


def test_output_is_a_model_directory_and_max_transitions_limits_the_data(finetuned, parent_dir, real_data,
                                                                         tmp_path):
    from simdist.models.io import load_model
    from simdist.pipelines.finetune import finetune, make_config

    full = finetuned["residual"]
    model, meta = load_model(full.out, robot="cartpole")
    assert model.has_residual and model.cfg.residual_hidden == model.cfg.latent_size // 2
    assert meta["source"] == "finetune" and meta["mode"] == "residual"
    assert meta["parent_model"] == str(Path(parent_dir).resolve()) and meta["control_dt"] == 0.02
    assert meta["real_data"] == str(Path(real_data).resolve())
    assert meta["real_data_used"]["transitions"] == full.metrics["real_data"]["transitions"]
    assert meta["finetune"]["mode"] == "residual" and meta["finetune"]["preset"] == "tiny"
    # A residual model can be finetuned again: with_residual keeps its trained residual.
    from simdist.pipelines.finetune import with_residual

    before, again = _leaves(model), _leaves(with_residual(model, None, seed=5))
    assert before.keys() == again.keys() and all(np.array_equal(before[k], again[k]) for k in before)
    _, dmeta = load_model(finetuned["dynamics"].out)
    assert dmeta["mode"] == "dynamics" and not load_model(finetuned["dynamics"].out)[0].has_residual

    cfg = make_config("tiny", 0, "dynamics", {"steps": 2, "max_transitions": 700})
    part = finetune(cfg, parent_dir, real_data, tmp_path / "few", show_progress=False)
    used, all_ = part.metrics["real_data"], full.metrics["real_data"]
    # Whole training episodes, in order, as many as fit in 700 transitions (4 of 150 steps each
    # when no recorded episode ended early).
    cum = np.cumsum(_split_lengths(real_data)[0])
    keep = int(np.searchsorted(cum, 700, side="right"))
    assert used["episodes"] == keep and used["transitions"] == int(cum[keep - 1]) <= 700
    assert used["seconds"] == pytest.approx(0.02 * used["transitions"])
    assert used["train_windows"] < all_["train_windows"]
    # The held-out episodes do not depend on the amount of training data.
    assert used["heldout_windows"] == all_["heldout_windows"]
    # `full` is the residual run: the same windows, scored by another compiled program (see above).
    assert part.metrics["latent_error_before"] == pytest.approx(full.metrics["latent_error_before"], rel=1e-6)
    assert load_model(part.out)[1]["real_data_used"]["transitions"] == used["transitions"]


def test_labelled_sim_data_is_accepted_and_its_labels_ignored(parent_dir, tiny_dataset, tmp_path, monkeypatch):
    from simdist.models import train
    from simdist.pipelines.finetune import finetune, make_config

    seen = []
    orig = train.WorldModelTrainer.step

    def spy(self, batch, key):
        seen.append(set(batch))
        return orig(self, batch, key)

    monkeypatch.setattr(train.WorldModelTrainer, "step", spy)
    ds, _ = tiny_dataset
    cfg = make_config("tiny", 0, "dynamics", {"steps": 2, "eval_windows": 64})
    r = finetune(cfg, parent_dir, ds.path, tmp_path / "sim", show_progress=False)
    assert r.metrics["real_data"]["source"] == "sim"
    assert seen and all(keys == {"hist_obs", "hist_act", "obs", "act"} for keys in seen)


def test_nan_loss_raises_training_diverged(parent_dir, real_data, tmp_path, monkeypatch):
    from simdist.models import train
    from simdist.pipelines.finetune import finetune, make_config

    def nan_step(self, batch, key):
        self.steps += 1
        return {"loss": jnp.asarray(jnp.nan)}

    monkeypatch.setattr(train.WorldModelTrainer, "step", nan_step)
    cfg = make_config("tiny", 0, "dynamics", {"steps": 4, "eval_every": 2})
    with pytest.raises(TrainingDivergedError, match="non-finite"):
        finetune(cfg, parent_dir, real_data, tmp_path / "nan", show_progress=False)


@pytest.mark.parametrize("mode", ["dynamics", "residual"])
def test_resumed_finetune_matches_an_uninterrupted_run(parent_dir, real_data, tmp_path, mode):
    from simdist.models.io import load_model
    from simdist.pipelines.finetune import finetune, make_config

    cfg = make_config("tiny", 0, mode, {"steps": 20, "eval_every": 10, "checkpoint_every": 10})
    full = finetune(cfg, parent_dir, real_data, tmp_path / "full", show_progress=False)
    out = tmp_path / "resumed"
    part = finetune(cfg, parent_dir, real_data, out, show_progress=False, stop_after=10)
    assert part.metrics is None and part.step == 10 and not (out / "model.json").exists()
    done = finetune(cfg, parent_dir, real_data, out, show_progress=False)
    assert done.started_at == 10
    a, b = _leaves(load_model(full.out)[0]), _leaves(load_model(out)[0])
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert done.metrics["latent_error_after"] == full.metrics["latent_error_after"]
    hist = [json.loads(x)["step"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert hist == [0, 10, 20]


def test_proximal_penalty_is_zero_at_the_sim_weights_and_holds_them_back(parent_dir, real_data, tmp_path):
    """λ Σ (w − w_sim)² over the dynamics only: zero at the simulation's weights, exactly λ δ²
    for a weight moved by δ, and a strong one keeps the finetuned dynamics near the sim's."""
    from simdist.models.io import load_model
    from simdist.models.loss import world_model_loss
    from simdist.models.world_model import DYNAMICS
    from simdist.pipelines.finetune import finetune, make_config, proximal_loss

    model0, _ = load_model(parent_dir)
    rng = np.random.default_rng(0)
    h, t = model0.cfg.history, model0.cfg.horizon
    batch = {"hist_obs": rng.standard_normal((4, h, 5)).astype(np.float32),
             "hist_act": rng.uniform(-1, 1, (4, h, 1)).astype(np.float32),
             "obs": rng.standard_normal((4, t + 1, 5)).astype(np.float32),
             "act": rng.uniform(-1, 1, (4, t, 1)).astype(np.float32)}
    loss_fn = proximal_loss(model0, DYNAMICS, 0.5)
    key = jax.random.key(0)
    base, _ = world_model_loss(model0, batch, key, train=False)
    got, m = loss_fn(model0, batch, key, train=False)
    assert float(m["proximal"]) == 0.0 and float(got) == float(base)
    moved, _ = load_model(parent_dir)
    state = nnx.state(moved, DYNAMICS)
    pure = nnx.to_pure_dict(state)
    first = jax.tree_util.tree_flatten_with_path(pure)[0][0][0]  # the path of one dynamics weight
    sub = pure
    for k in first[:-1]:
        sub = sub[k.key]
    w = np.asarray(sub[first[-1].key])
    sub[first[-1].key] = w + np.where(np.arange(w.size).reshape(w.shape) == 0, 0.2, 0.0).astype(w.dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(moved, state)
    _, m = loss_fn(moved, batch, key, train=False)
    assert float(m["proximal"]) == pytest.approx(0.5 * 0.04, rel=1e-4)

    def drift(proximal: float) -> float:
        out = tmp_path / f"prox-{proximal}"
        cfg = make_config("tiny", 0, "dynamics", {"steps": 60, "proximal": proximal})
        finetune(cfg, parent_dir, real_data, out, show_progress=False)
        a, b = _leaves(load_model(out)[0]), _leaves(model0)
        return sum(float(np.sum((a[k] - b[k]) ** 2)) for k in a if "dynamics" in k)

    free, held = drift(0.0), drift(100.0)
    assert held < 0.1 * free


def test_sim_replay_mixes_simulation_windows_into_every_batch(parent_dir, real_data, tiny_dataset, tmp_path,
                                                              monkeypatch):
    """sim_fraction f: every batch holds round(B f) windows of the parent's Stage 2 dataset
    (found through the model's meta) and the rest real ones; a model that names no dataset
    needs sim_data, and a bad one fails before anything is written."""
    import shutil

    from simdist.data.windows import WindowSampler
    from simdist.pipelines.finetune import finetune, make_config

    calls = []
    sample = WindowSampler.sample

    def spy(self, n, rng):
        calls.append((str(Path(self.dataset.path).resolve()), int(n)))
        return sample(self, n, rng)

    monkeypatch.setattr(WindowSampler, "sample", spy)
    cfg = make_config("tiny", 0, "dynamics", {"steps": 3, "sim_fraction": 0.25, "eval_every": 3})
    out = finetune(cfg, parent_dir, real_data, tmp_path / "replay", show_progress=False).out
    sim_path = json.loads((parent_dir / "model.json").read_text())["dataset"]
    assert Path(sim_path).resolve() == Path(tiny_dataset[0].path).resolve()
    real, sim = str(Path(real_data).resolve()), str(Path(sim_path).resolve())
    assert sorted(calls) == sorted([(real, 24)] * 3 + [(sim, 8)] * 3)
    assert json.loads((out / "model.json").read_text())["dataset"] == sim_path  # kept for the next finetune

    orphan = tmp_path / "orphan"
    shutil.copytree(parent_dir, orphan)
    meta = json.loads((orphan / "model.json").read_text())
    del meta["dataset"]
    (orphan / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="set sim_data=PATH"):
        finetune(cfg, orphan, real_data, tmp_path / "x", show_progress=False)
    bad = make_config("tiny", 0, "dynamics", {"steps": 3, "sim_fraction": 0.25, "sim_data": str(tmp_path / "nope")})
    with pytest.raises(DatasetError):
        finetune(bad, parent_dir, real_data, tmp_path / "y", show_progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
