"""The stages that read an earlier artifact before writing: generate-data (the expert's
snapshots; and the dataset it resumes), and `deploy --record` (the real dataset it appends to).
A damaged input is one `error:` line naming the file, with nothing added to the output."""

from __future__ import annotations

import shutil

import numpy as np

from simdist.data import Dataset, DatasetSpec
from tests.test_data_integrity import chunk_file, damage as damage_chunk
from tests.test_weights_integrity import _assert_one_line_error, _main, damage as damage_weights


def test_generate_data_refuses_a_damaged_expert_snapshot(tiny_expert, tmp_path, capfd):
    expert = tmp_path / "expert"
    shutil.copytree(tiny_expert[1], expert, ignore=shutil.ignore_patterns("checkpoints"))
    final = max(int(p.name) for p in (expert / "snapshots").iterdir() if p.name.isdigit())
    damage_weights(expert / "snapshots" / str(final), "flip")
    out = tmp_path / "data"
    code, o, e = _main(capfd, "generate-data", "--robot", "cartpole", "--preset", "tiny", "--expert", expert,
                       "--out", out, "--no-progress")  # fmt: skip
    _assert_one_line_error(code, o, e, f"{expert}/snapshots/{final} is corrupt: leaf")
    assert not out.exists()


def test_generate_data_refuses_to_resume_a_damaged_dataset(tiny_expert, tiny_dataset, tmp_path, capfd):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset[0].path, data)
    f = chunk_file(data, "obs", 0)
    damage_chunk(f, "flip")
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    code, o, e = _main(capfd, "generate-data", "--robot", "cartpole", "--preset", "tiny", "--expert", tiny_expert[1],
                       "--out", data, "--no-progress")  # fmt: skip
    _assert_one_line_error(code, o, e, str(f), "is corrupt")
    after = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    assert after == before  # nothing appended, nothing rewritten


def test_deploy_record_refuses_to_append_to_a_damaged_real_dataset(tiny_model, tmp_path, capfd):
    real = tmp_path / "real"
    spec = DatasetSpec(robot="cartpole", source="real", control_dt=0.02, obs_size=5, action_size=1, labels=False)
    rng = np.random.default_rng(0)
    with Dataset.create(real, spec, chunk_steps=16) as ds:
        ds.append_episodes({"obs": rng.standard_normal((40, 5)).astype(np.float32),
                            "action": rng.uniform(-1, 1, (40, 1)).astype(np.float32)},
                           np.asarray([20, 20]), np.full(2, -1, np.int64), np.zeros(2, np.int64))  # fmt: skip
    f = chunk_file(real, "action", 1)
    damage_chunk(f, "truncate")
    code, o, e = _main(capfd, "deploy", "--robot", "cartpole", "--model", tiny_model[1].out, "--episodes", "1",
                       "--episode-length", "5", "--mppi", "tiny", "--record", real, "--no-progress")  # fmt: skip
    _assert_one_line_error(code, o, e, str(f))
    assert Dataset.open(real).n_transitions == 40  # the recording is untouched
