"""Stage 2 dataset storage (zarr v3 via tensorstore) and world-model window sampling."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from simdist.data import Dataset, DatasetSpec, WindowSampler, format_info, heldout_mask
from simdist.data.dataset import STD_FLOOR
from simdist.errors import DatasetError, SimdistError


def make_spec(**kw) -> DatasetSpec:
    base = dict(robot="cartpole", source="sim", control_dt=0.02, obs_size=5, action_size=2)
    base.update(kw)
    return DatasetSpec(**base)


def random_batch(rng: np.random.Generator, spec: DatasetSpec, lengths) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths, np.int64)
    n = int(lengths.sum())
    steps = {}
    for name, (shape, dtype) in spec.fields().items():
        if dtype == "float32":
            steps[name] = (rng.normal(size=(n, *shape)) * 3 + 1).astype(np.float32)
        else:
            steps[name] = rng.integers(0, 2, size=(n, *shape)).astype(bool)
    if "command" in steps:
        steps["command"][:, -1] = 0.7  # a constant feature: its std is floored
    policy = rng.integers(-1, 4, size=len(lengths))
    terminated = rng.integers(0, 2, size=len(lengths))
    return steps, lengths, policy, terminated


def concat_batches(batches):
    steps = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
    return steps, *(np.concatenate([b[i] for b in batches]) for i in (1, 2, 3))


def deterministic_batch(spec: DatasetSpec, first_episode: int, lengths) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Contents that identify each row: obs = [episode, local step, ...], etc."""
    lengths = np.asarray(lengths, np.int64)
    ep = np.repeat(np.arange(first_episode, first_episode + len(lengths)), lengths)
    step = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return expected_rows(spec, ep, step), lengths, np.arange(first_episode, first_episode + len(lengths)) % 5 - 1, (
        np.arange(first_episode, first_episode + len(lengths)) % 2
    )


def expected_rows(spec: DatasetSpec, ep: np.ndarray, step: np.ndarray) -> dict[str, np.ndarray]:
    n = len(ep)
    out = {}
    obs = np.zeros((n, spec.obs_size), np.float32)
    obs[:, 0], obs[:, 1] = ep, step
    out["obs"] = obs
    act = np.zeros((n, spec.action_size), np.float32)
    act[:, 0], act[:, -1] = ep + 1, step + 1  # never zero: distinguishes history padding
    out["action"] = act
    if spec.command_size:
        out["command"] = np.repeat((ep * 100 + step)[:, None], spec.command_size, axis=1).astype(np.float32)
    if spec.labels:
        out["reward"] = (ep * 1000 + step).astype(np.float32)
        out["value"] = (ep * 1000 + step + 0.25).astype(np.float32)
        out["expert"] = (step % 2 == 0).astype(np.uint8)
        out["noisy"] = (step % 3 == 0).astype(np.uint8)
    return out


def assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    for n in needles:
        assert n in msg, (n, msg)


# ---------------------------------------------------------------------------------------------
# 1. schema round trip
# ---------------------------------------------------------------------------------------------


def test_round_trip_fields_episodes_attrs_and_stats(tmp_path):
    spec = make_spec(command_size=3, obs_names=("x", "v", "th", "w", "h"))
    path = tmp_path / "runs" / "x" / "data"
    extra = {"expert": "runs/x/expert", "generation": {"n_envs": 4, "noise": [0.05, 2.5]}}
    rng = np.random.default_rng(0)
    ds = Dataset.create(path, spec, extra=extra, chunk_steps=64)  # small chunks: many chunks + resizes
    b1 = random_batch(rng, spec, rng.integers(1, 200, size=5))
    b2 = random_batch(rng, spec, rng.integers(1, 200, size=7))
    ds.append_episodes(*b1)
    ds.append_episodes(*b2)
    ds.close()
    steps, lengths, policy, terminated = concat_batches([b1, b2])

    ds2 = Dataset.open(path)
    assert ds2.spec == spec
    assert ds2.attrs["extra"] == extra and ds2.extra == extra
    assert ds2.n_transitions == int(lengths.sum()) and ds2.n_episodes == 12
    eps = ds2.episodes()
    assert eps.dtype == np.int64 and eps.shape == (12, 4)
    np.testing.assert_array_equal(eps[:, 0], np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    np.testing.assert_array_equal(eps[:, 1], lengths)
    np.testing.assert_array_equal(eps[:, 2], policy)
    np.testing.assert_array_equal(eps[:, 3], terminated)
    for name, (shape, dtype) in spec.fields().items():
        got = ds2.read(name)
        assert got.dtype == np.dtype(dtype) and got.shape == (ds2.n_transitions, *shape)
        np.testing.assert_array_equal(got, steps[name].astype(dtype))  # bit-identical
        np.testing.assert_array_equal(ds2.read(name, 10, 77), steps[name][10:77].astype(dtype))
        np.testing.assert_array_equal(ds2.read(name, -5), steps[name][-5:].astype(dtype))
    for i in (0, 6, 11, -1):
        s, n = eps[i, 0], eps[i, 1]
        ep = ds2.read_episode(i)
        assert set(ep) == set(spec.fields())
        for name in spec.fields():
            np.testing.assert_array_equal(ep[name], steps[name][s : s + n].astype(ep[name].dtype))
    # Range reads (used by the sampler) equal the concatenated slices.
    got = ds2.read_ranges("obs", eps[[1, 2, 5, 9], 0], eps[[1, 2, 5, 9], 0] + eps[[1, 2, 5, 9], 1])
    want = np.concatenate([steps["obs"][s : s + n] for s, n in eps[[1, 2, 5, 9], :2]])
    np.testing.assert_array_equal(got, want)

    stats = ds2.stats()
    assert set(stats) == {"obs", "action", "command", "reward", "value"}
    for name, (mean, std) in stats.items():
        x = steps[name].astype(np.float64)
        assert mean.dtype == np.float32 and mean.shape == spec.fields()[name][0]
        np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(std, np.maximum(x.std(axis=0), STD_FLOOR), rtol=1e-5, atol=1e-6)
    assert stats["command"][1][-1] == pytest.approx(STD_FLOOR)  # constant feature -> floored std

    info = ds2.info()
    json.dumps(info)  # the CLI can print it as JSON
    assert info["n_transitions"] == ds2.n_transitions and info["n_episodes"] == 12
    assert info["duration_s"] == pytest.approx(ds2.n_transitions * 0.02)
    assert info["episode_length"] == {"min": int(lengths.min()), "mean": pytest.approx(lengths.mean()),
                                      "max": int(lengths.max())}
    assert info["expert_share"] == pytest.approx(steps["expert"].mean())
    assert info["noisy_share"] == pytest.approx(steps["noisy"].mean())
    assert info["terminated_share"] == pytest.approx(terminated.mean())
    assert sum(v["episodes"] for v in info["policy_counts"].values()) == 12
    assert sum(v["transitions"] for v in info["policy_counts"].values()) == ds2.n_transitions
    assert info["size_bytes"] > 0 and info["schema_version"] == 2 and info["checksums"] is True
    assert info["verified_chunks"] is None
    text = format_info(info)
    assert "cartpole" in text and f"{ds2.n_transitions:,}" in text and "obs" in text and "\n" in text
    assert "chunks not verified" in text
    # chunk_steps=64: obs/action/command/reward/value/expert/noisy chunks plus the episode-table chunks
    n_chunks = len(spec.fields()) * -(-ds2.n_transitions // 64) + -(-12 // 64)
    verified = ds2.info(verify=True)
    assert verified["verified_chunks"] == n_chunks == ds2.verify()
    assert f"all {n_chunks:,} chunks read: crc32c checksums match" in format_info(verified)


# ---------------------------------------------------------------------------------------------
# 2. interrupted writes
# ---------------------------------------------------------------------------------------------


def test_append_interrupted_before_commit_leaves_previous_episodes(tmp_path, monkeypatch):
    spec = make_spec()
    path = tmp_path / "data"
    ds = Dataset.create(path, spec, chunk_steps=32)
    b1 = deterministic_batch(spec, 0, [40, 7, 90])
    ds.append_episodes(*b1)

    def crash(self, attrs):
        raise RuntimeError("killed before commit")

    monkeypatch.setattr(Dataset, "_commit", crash)
    b2 = deterministic_batch(spec, 3, [300, 5])  # needs a resize
    with pytest.raises(RuntimeError):
        ds.append_episodes(*b2)
    monkeypatch.undo()

    # The rows really were written past the committed count...
    raw = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str((path / "obs").absolute())}}).result()
    np.testing.assert_array_equal(raw[137 : 137 + 305].read().result(), b2[0]["obs"])
    # ...but a reader sees only the committed whole episodes.
    r = Dataset.open(path)
    assert (r.n_transitions, r.n_episodes) == (137, 3)
    np.testing.assert_array_equal(r.read("obs"), b1[0]["obs"])
    assert r.read("obs", 0, 10_000).shape[0] == 137
    assert ds.n_transitions == 137  # the failed append did not change the writer's view

    b3 = deterministic_batch(spec, 3, [12, 33])
    ds.append_episodes(*b3)
    ds.close()
    assert r.n_episodes == 3  # a reader keeps its snapshot until it reloads
    r.reload()
    steps, lengths, policy, term = concat_batches([b1, b3])
    assert (r.n_transitions, r.n_episodes) == (int(lengths.sum()), 5)
    for name in spec.fields():
        np.testing.assert_array_equal(r.read(name), steps[name])
    np.testing.assert_array_equal(r.episodes()[:, 1:], np.stack([lengths, policy, term], 1))
    np.testing.assert_allclose(r.stats()["reward"][0], steps["reward"].mean(), rtol=1e-6)


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from simdist.data.dataset import Dataset
    sys.path.insert(0, sys.argv[2])
    from test_dataset import deterministic_batch
    ds = Dataset.open(sys.argv[1], writable=True)
    rng = np.random.default_rng(ds.n_episodes)
    t0 = time.time()
    while time.time() - t0 < 30:
        lengths = rng.integers(1, 400, size=12)
        ds.append_episodes(*deterministic_batch(ds.spec, ds.n_episodes, lengths))
    """
)


def check_whole_episodes(path: Path) -> Dataset:
    ds = Dataset.open(path)
    eps = ds.episodes()
    assert ds.n_episodes == len(eps) >= 1
    np.testing.assert_array_equal(eps[:, 0], np.concatenate([[0], np.cumsum(eps[:, 1])[:-1]]))
    assert eps[:, 1].sum() == ds.n_transitions
    ids = np.arange(len(eps))
    np.testing.assert_array_equal(eps[:, 2], ids % 5 - 1)
    np.testing.assert_array_equal(eps[:, 3], ids % 2)
    ep = np.repeat(ids, eps[:, 1])
    step = np.arange(ds.n_transitions) - np.repeat(eps[:, 0], eps[:, 1])
    want = expected_rows(ds.spec, ep, step)
    for name in ds.spec.fields():
        np.testing.assert_array_equal(ds.read(name), want[name], err_msg=name)
    return ds


def test_sigkill_during_appends_leaves_whole_episodes(tmp_path):
    spec = make_spec(command_size=2)
    path = tmp_path / "data"
    Dataset.create(path, spec, chunk_steps=256).close()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for delay in (0.0, 0.05, 0.2):
        before = Dataset.open(path).n_episodes
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parent)], env=env)
        try:
            deadline = time.time() + 60
            while json.loads((path / "zarr.json").read_text())["attributes"]["n_episodes"] <= before:
                assert child.poll() is None, "writer died on its own"
                assert time.time() < deadline, "writer never committed"
                time.sleep(0.01)
            time.sleep(delay)  # let it get into the middle of later appends
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert child.returncode == -signal.SIGKILL
        ds = check_whole_episodes(path)
        assert ds.n_episodes > before

    # Appending carries on from the committed state (the lock died with the writer).
    ds = Dataset.open(path, writable=True)
    n = ds.n_episodes
    ds.append_episodes(*deterministic_batch(spec, n, [3, 250, 1]))
    ds.close()
    assert check_whole_episodes(path).n_episodes == n + 3


def test_stale_tensorstore_lock_files_from_a_killed_writer_are_harmless(tmp_path):
    """A SIGKILL mid-chunk-write leaves `<chunk>.__lock`, which tensorstore reuses untruncated."""
    spec = make_spec()
    path = tmp_path / "data"
    ds = Dataset.create(path, spec, chunk_steps=32)
    ds.append_episodes(*deterministic_batch(spec, 0, [50, 11]))
    ds.close()
    garbage = np.random.default_rng(0).bytes(20_000)  # longer than any real chunk
    for root, _, files in os.walk(path):
        for f in files:
            if Path(root) != path:  # every chunk and array metadata file
                Path(root, f + ".__lock").write_bytes(garbage)
    ds = Dataset.open(path, writable=True)
    ds.append_episodes(*deterministic_batch(spec, 2, [3, 40, 200]))  # boundary chunk + resize
    ds.close()
    assert check_whole_episodes(path).n_episodes == 5


# ---------------------------------------------------------------------------------------------
# 3. errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_ds(tmp_path):
    spec = make_spec()
    path = tmp_path / "data"
    ds = Dataset.create(path, spec)
    ds.append_episodes(*deterministic_batch(spec, 0, [10, 20]))
    ds.close()
    return path


def test_open_errors_are_one_line_dataset_errors(tmp_path, small_ds):
    path = small_ds
    with pytest.raises(DatasetError) as e:
        Dataset.open(path, robot="quadruped")
    assert_one_line(e, str(path), "robot 'cartpole', not 'quadruped'")
    assert issubclass(DatasetError, SimdistError)

    with pytest.raises(DatasetError) as e:
        Dataset.open(tmp_path / "nope")
    assert_one_line(e, "does not exist")

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as e:
        Dataset.open(tmp_path / "empty")
    assert_one_line(e, "not a simdist dataset (no zarr.json)")

    with pytest.raises(DatasetError) as e:
        Dataset.open(path / "obs")  # a zarr array, not our group
    assert_one_line(e, "not a simdist dataset")

    # Dataset made for obs_size 7, opened expecting 5.
    spec7 = make_spec(obs_size=7)
    Dataset.create(tmp_path / "d7", spec7).close()
    with pytest.raises(DatasetError) as e:
        Dataset.open(tmp_path / "d7", obs_size=5)
    assert_one_line(e, "field 'obs' has per-step shape (7,), expected (5,)")
    with pytest.raises(DatasetError) as e:
        Dataset.open(tmp_path / "d7", action_size=3)
    assert_one_line(e, "field 'action'")
    with pytest.raises(DatasetError) as e:
        Dataset.open(tmp_path / "d7", command_size=2)
    assert_one_line(e, "command_size 0, expected 2")

    # Real data has no labels.
    Dataset.create(tmp_path / "real", make_spec(source="real", labels=False)).close()
    with pytest.raises(DatasetError) as e:
        Dataset.open(tmp_path / "real", require_labels=True)
    assert_one_line(e, "no reward/value/expert labels")
    assert "reward" not in Dataset.open(tmp_path / "real").field_names


def _copy(path: Path, dst: Path) -> Path:
    shutil.copytree(path, dst)
    (dst / "write.lock").unlink(missing_ok=True)
    return dst


def test_open_detects_damaged_datasets(tmp_path, small_ds):
    d = _copy(small_ds, tmp_path / "missing")
    shutil.rmtree(d / "value")
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, str(d), "missing field 'value'")

    # An array whose per-step shape disagrees with the metadata.
    d = _copy(small_ds, tmp_path / "shape")
    Dataset.create(tmp_path / "d7", make_spec(obs_size=7)).close()
    shutil.rmtree(d / "obs")
    shutil.copytree(tmp_path / "d7" / "obs", d / "obs")
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "field 'obs' has per-step shape (7,), expected (5,)")

    d = _copy(small_ds, tmp_path / "dtype")
    shutil.rmtree(d / "reward")
    shutil.copytree(d / "expert", d / "reward")
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "field 'reward' has dtype uint8, expected float32")

    d = _copy(small_ds, tmp_path / "garbage")
    (d / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "corrupt metadata")

    def edit(name, fn):
        d = _copy(small_ds, tmp_path / name)
        doc = json.loads((d / "zarr.json").read_text())
        fn(doc["attributes"])
        (d / "zarr.json").write_text(json.dumps(doc))
        return d

    d = edit("version", lambda a: a.update(schema_version=99))
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "unsupported dataset schema version 99")

    d = edit("count", lambda a: a.update(n_transitions=10**9))
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "corrupt dataset", "n_transitions=1000000000")

    d = edit("keys", lambda a: a.pop("fields"))
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "corrupt metadata")

    d = edit("fmt", lambda a: a.update(format="something-else"))
    with pytest.raises(DatasetError) as e:
        Dataset.open(d)
    assert_one_line(e, "not a simdist dataset")


def test_append_errors(tmp_path, small_ds):
    spec = make_spec()
    ds = Dataset.open(small_ds, writable=True)
    good = deterministic_batch(spec, 2, [5, 6])

    steps = {k: v.copy() for k, v in good[0].items()}
    steps["obs"][7, 3] = np.nan
    with pytest.raises(DatasetError) as e:
        ds.append_episodes(steps, *good[1:])
    assert_one_line(e, "field 'obs'", "NaN", "row 7")

    steps = dict(good[0])
    del steps["value"]
    with pytest.raises(DatasetError) as e:
        ds.append_episodes(steps, *good[1:])
    assert_one_line(e, "missing field(s) 'value'")

    steps = dict(good[0], obs=good[0]["obs"][:, :4])
    with pytest.raises(DatasetError) as e:
        ds.append_episodes(steps, *good[1:])
    assert_one_line(e, "field 'obs'", "(11, 5)")

    with pytest.raises(DatasetError) as e:
        ds.append_episodes(good[0], np.array([5, 7]), *good[2:])  # lengths do not add up
    assert_one_line(e, "sum of lengths = 12")

    with pytest.raises(DatasetError) as e:
        ds.append_episodes(dict(good[0], extra=good[0]["reward"]), *good[1:])
    assert_one_line(e, "unknown field(s) 'extra'")

    # A second writer is refused while the first holds the lock.
    with pytest.raises(DatasetError) as e:
        Dataset.open(small_ds, writable=True)
    assert_one_line(e, "open for writing")

    # Nothing of the failed appends is visible; a good one still works.
    assert (ds.n_transitions, ds.n_episodes) == (30, 2)
    ds.append_episodes(*good)
    ds.close()
    assert Dataset.open(small_ds).n_episodes == 4

    ro = Dataset.open(small_ds)
    with pytest.raises(DatasetError) as e:
        ro.append_episodes(*good)
    assert_one_line(e, "read-only")


# ---------------------------------------------------------------------------------------------
# 4. windows
# ---------------------------------------------------------------------------------------------

H, T = 4, 16


def check_windows(batch: dict, spec: DatasetSpec, valid_lengths: dict[int, int]) -> list[tuple[int, int]]:
    """Verify every window against the row encoding; return its (episode, anchor) pairs."""
    B = batch["obs"].shape[0]
    for k, v in batch.items():
        assert v.dtype == np.float32, k
    assert batch["hist_obs"].shape == (B, H, spec.obs_size)
    assert batch["hist_act"].shape == (B, H, spec.action_size)
    assert batch["obs"].shape == (B, T + 1, spec.obs_size)
    assert batch["act"].shape == (B, T, spec.action_size)
    ep = batch["obs"][:, 0, 0].astype(np.int64)
    t = batch["obs"][:, 0, 1].astype(np.int64)
    # Anchor validity: every target observation lies inside the episode.
    for e_, t_ in zip(ep, t):
        assert e_ in valid_lengths and 0 <= t_ and t_ + T <= valid_lengths[e_] - 1
    steps = t[:, None] + np.arange(T + 1)
    want = expected_rows(spec, np.repeat(ep, T + 1), steps.reshape(-1))
    np.testing.assert_array_equal(batch["obs"], want["obs"].reshape(B, T + 1, -1))
    fut = {k: v.reshape(B, T + 1, *v.shape[1:])[:, :T] for k, v in want.items()}
    np.testing.assert_array_equal(batch["act"], fut["action"])
    if "command" in batch:
        np.testing.assert_array_equal(batch["command"], fut["command"])
    for k in ("reward", "value", "expert"):
        if k in batch:
            np.testing.assert_array_equal(batch[k], fut[k].astype(np.float32))
    # History: o_{t-H}..o_{t-1}; before the episode start, o_0 with zero actions.
    hs = t[:, None] + np.arange(-H, 0)
    hw = expected_rows(spec, np.repeat(ep, H), np.maximum(hs, 0).reshape(-1))
    np.testing.assert_array_equal(batch["hist_obs"], hw["obs"].reshape(B, H, -1))
    hact = hw["action"].reshape(B, H, -1).copy()
    hact[hs < 0] = 0.0
    np.testing.assert_array_equal(batch["hist_act"], hact)
    return list(zip(ep.tolist(), t.tolist()))


def build(path: Path, lengths, spec=None, chunk_steps=None) -> Dataset:
    spec = spec or make_spec(obs_size=3, command_size=1)
    ds = Dataset.create(path, spec, chunk_steps=chunk_steps)
    ds.append_episodes(*deterministic_batch(spec, 0, lengths))
    ds.close()
    return Dataset.open(path)


def test_windows_alignment_padding_and_episode_bounds(tmp_path):
    lengths = [20, 3, 17, 25, 16, 30, 18]
    ds = build(tmp_path / "d", lengths)
    valid = {i: n for i, n in enumerate(lengths)}
    ws = WindowSampler(ds, H, T, split="all")
    expected = {(i, t) for i, n in enumerate(lengths) for t in range(n - T)}  # t + T <= L - 1
    assert ws.n_windows == len(expected) == 30

    seen = []
    for batch in ws.iterate(7):
        assert batch["obs"].shape[0] == 7 and batch["mask"].shape == (7,)
        pairs = check_windows(batch, ds.spec, valid)
        seen += [p for p, m in zip(pairs, batch["mask"]) if m == 1]
    assert sorted(seen) == sorted(expected)  # every valid window exactly once, none other
    assert {k for k in batch} == {"hist_obs", "hist_act", "obs", "act", "command", "reward", "value", "expert", "mask"}

    # Anchor t=0: the whole history is o_0 with zero actions.
    batch = next(ws.iterate(30))
    t0 = np.nonzero((batch["obs"][:, 0, 1] == 0) & (batch["obs"][:, 0, 0] == 3))[0][0]
    np.testing.assert_array_equal(batch["hist_obs"][t0], np.tile([[3, 0, 0]], (H, 1)))
    np.testing.assert_array_equal(batch["hist_act"][t0], np.zeros((H, 2)))
    # Anchor t=2: two padded steps, then o_0, o_1 with their real actions.
    t2 = np.nonzero((batch["obs"][:, 0, 1] == 2) & (batch["obs"][:, 0, 0] == 3))[0][0]
    np.testing.assert_array_equal(batch["hist_obs"][t2, :, 1], [0, 0, 0, 1])
    np.testing.assert_array_equal(batch["hist_act"][t2, :, 1], [0, 0, 1, 2])

    rng = np.random.default_rng(0)
    pairs = check_windows(ws.sample(256, rng), ds.spec, valid)
    assert len(set(pairs)) > 20
    b1 = ws.sample(16, np.random.default_rng(5))
    b2 = ws.sample(16, np.random.default_rng(5))
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])

    only = WindowSampler(ds, H, T, split="all", fields=("obs", "action"))
    assert set(only.sample(2, rng)) == {"hist_obs", "hist_act", "obs", "act"}
    with pytest.raises(DatasetError) as e:
        WindowSampler(ds, H, T, fields=("torque",))
    assert_one_line(e, "'torque'")
    with pytest.raises(DatasetError) as e:
        WindowSampler(ds, H, 40, split="all")
    assert_one_line(e, "horizon+1 = 41")


def test_heldout_split_is_by_episode_and_disjoint(tmp_path):
    n_eps = 40
    ds = build(tmp_path / "d", [20] * n_eps)
    valid = {i: 20 for i in range(n_eps)}
    tr = WindowSampler(ds, H, T, split="train", heldout_fraction=0.25)
    ho = WindowSampler(ds, H, T, split="heldout", heldout_fraction=0.25)

    def episodes_of(ws):
        return {e for b in ws.iterate(64) for (e, _), m in zip(check_windows(b, ds.spec, valid), b["mask"]) if m}

    train_eps, held_eps = episodes_of(tr), episodes_of(ho)
    assert train_eps.isdisjoint(held_eps)
    assert train_eps | held_eps == set(range(n_eps))
    assert 8 <= len(held_eps) <= 12
    assert tr.n_windows + ho.n_windows == n_eps * (20 - T)
    for _ in range(5):
        assert {e for e, _ in check_windows(tr.sample(128, np.random.default_rng(_)), ds.spec, valid)} <= train_eps

    # Deterministic, stable as the dataset grows, >= 1 held-out episode from 2 episodes on.
    np.testing.assert_array_equal(heldout_mask(40, 0.25), heldout_mask(80, 0.25)[:40])
    assert heldout_mask(2, 0.1).sum() == 1 and heldout_mask(1, 0.1).sum() == 0
    assert heldout_mask(1000, 0.1).sum() == pytest.approx(100, abs=3)

    with pytest.raises(DatasetError) as e:
        WindowSampler(ds, H, T, split="heldout", heldout_fraction=0.0)
    assert_one_line(e, "held-out split is empty")
    short = build(tmp_path / "short", [30] + [5] * 9)  # episode 0 (held out) is long, the rest short
    with pytest.raises(DatasetError) as e:
        WindowSampler(short, H, T, split="train", heldout_fraction=0.1)
    assert_one_line(e, "no episode of the training split is longer than horizon+1 = 17")


def test_streaming_sampler_refreshes_valid_windows(tmp_path):
    rng = np.random.default_rng(1)
    lengths = rng.integers(17, 40, size=60)
    ds = build(tmp_path / "d", lengths, chunk_steps=64)
    valid = dict(enumerate(lengths.tolist()))
    held = set(np.nonzero(heldout_mask(60, 0.1))[0].tolist())
    ws = WindowSampler(ds, H, T, split="train", max_resident_transitions=150, refresh_every=3, seed=3)
    assert ws.streaming and ws.resident_transitions <= 150
    assert ws.split_transitions == int(lengths[[i for i in range(60) if i not in held]].sum())
    seen, resident_sets = set(), set()
    for i in range(12):
        batch = ws.sample(64, rng)
        eps = {e for e, _ in check_windows(batch, ds.spec, valid)}
        assert eps.isdisjoint(held)
        assert eps <= set(ws.resident_episodes.tolist())
        seen |= eps
        resident_sets.add(tuple(ws.resident_episodes.tolist()))
    assert len(resident_sets) == 4  # refreshed every 3 calls
    assert len(seen) > len(ws.resident_episodes)
    ws.close()

    # Not streaming when the split fits.
    assert not WindowSampler(ds, H, T, max_resident_transitions=10**6).streaming


# ---------------------------------------------------------------------------------------------
# 5. atomic create / resume
# ---------------------------------------------------------------------------------------------


def test_create_is_atomic_and_refuses_existing_paths(tmp_path):
    spec = make_spec()
    path = tmp_path / "data"
    # What a create killed half-way leaves behind: only a temp sibling, PATH itself is absent.
    dead = tmp_path / "data.tmp-999999999-dead"
    (dead / "obs").mkdir(parents=True)
    (dead / "obs" / "zarr.json").write_text("{}")
    with pytest.raises(DatasetError) as e:
        Dataset.open(path)
    assert_one_line(e, "does not exist")
    ds = Dataset.create(path, spec)
    assert ds.n_transitions == 0 and ds.n_episodes == 0
    assert not dead.exists()  # leftovers of dead processes are cleaned up
    assert not list(tmp_path.glob("data.tmp-*"))
    ds.append_episodes(*deterministic_batch(spec, 0, [4]))
    ds.close()

    with pytest.raises(DatasetError) as e:
        Dataset.create(path, spec)
    assert_one_line(e, "already exists")
    assert Dataset.open(path).n_episodes == 1  # untouched
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError):
        Dataset.create(tmp_path / "file", spec)

    # Resume: open_or_create reopens a compatible dataset and refuses a different one.
    with Dataset.open_or_create(path, spec) as ds:
        assert ds.n_episodes == 1 and ds.writable
        ds.append_episodes(*deterministic_batch(spec, 1, [6]))
    with pytest.raises(DatasetError) as e:
        Dataset.open_or_create(path, make_spec(robot="quadruped"))
    assert_one_line(e, "does not match", "robot")
    with Dataset.open_or_create(tmp_path / "new", spec, extra={"k": 1}) as ds:
        assert ds.n_episodes == 0 and ds.extra == {"k": 1}
    assert check_whole_episodes(path).n_episodes == 2


def test_expert_action_labels_round_trip_without_statistics(tmp_path):
    """The relabelled BC target is an optional labelled field: stored and read back as given,
    sampled into windows when asked for, no normalisation statistics of its own, and a spec
    that differs in it cannot be appended to."""
    spec = make_spec(command_size=3, expert_action=True)
    assert spec.fields()["expert_action"] == ((2,), "float32")
    assert DatasetSpec.from_json(spec.to_json()) == spec
    assert DatasetSpec.from_json({k: v for k, v in spec.to_json().items() if k != "expert_action"}) == make_spec(command_size=3)
    assert "expert_action" in " ".join(spec.mismatches(make_spec(command_size=3)))
    with pytest.raises(DatasetError, match="expert_action"):
        make_spec(labels=False, source="real", expert_action=True)
    rng = np.random.default_rng(0)
    batch = random_batch(rng, spec, [40, 30])
    ds = Dataset.create(tmp_path / "d", spec)
    ds.append_episodes(*batch)
    ds.close()
    ds = Dataset.open(tmp_path / "d")
    np.testing.assert_array_equal(ds.read("expert_action"), batch[0]["expert_action"])
    assert "expert_action" not in ds.stats()
    w = WindowSampler(ds, 2, 3, split="all", fields=("command", "expert", "expert_action")).sample(8, rng)
    assert w["expert_action"].shape == (8, 3, 2)
    assert "expert_action" not in WindowSampler(ds, 2, 3, split="all").sample(2, rng)
    with pytest.raises(DatasetError, match="expert_action"):
        Dataset.open_or_create(tmp_path / "d", make_spec(command_size=3))


def test_a_script_that_leaves_a_dataset_open_exits_quietly(tmp_path):
    # Module globals are torn down at interpreter exit before the last Dataset is collected;
    # its __del__ must still release the lock without printing "Exception ignored in ...".
    path = tmp_path / "data"
    Dataset.create(path, make_spec(), chunk_steps=64).close()
    # Importing jax first changes the teardown order so that the Dataset outlives `contextlib`.
    code = "import sys\nimport jax.numpy\nfrom simdist.data import Dataset\nds = Dataset.open(sys.argv[1], writable=True)\n"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    Dataset.open(path, writable=True).close()  # and the lock is free again
