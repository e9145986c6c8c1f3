"""Dataset integrity: every chunk carries a crc32c checksum that reads verify, a missing chunk
is an error rather than zeros, and both are one-line DatasetErrors naming the chunk file, from
the Dataset API, ``simdist data info``, distill and finetune. Schema 1 datasets (no checksums)
still open and read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simdist.data import Dataset, DatasetSpec, format_info
from simdist.errors import DatasetError

CHUNK = 16
LENGTHS = (20, 25, 19)  # 64 rows: 4 chunks of 16 per field


def write_tiny(path: Path, source: str, *, checksums: bool = True) -> Path:
    """A tiny cartpole-shaped dataset written through the Dataset API (sim: labelled)."""
    labels = source == "sim"
    spec = DatasetSpec(robot="cartpole", source=source, control_dt=0.02, obs_size=5, action_size=1, labels=labels)
    rng = np.random.default_rng(0)
    n = sum(LENGTHS)
    steps = {"obs": rng.standard_normal((n, 5)), "action": rng.uniform(-1, 1, (n, 1))}
    if labels:
        steps.update(reward=rng.standard_normal(n), value=rng.standard_normal(n),
                     expert=rng.integers(0, 2, n), noisy=np.zeros(n, np.uint8))  # noisy: all-zero chunks
    with Dataset.create(path, spec, chunk_steps=CHUNK, checksums=checksums) as ds:
        ds.append_episodes(steps, np.asarray(LENGTHS), np.full(3, -1 if source == "real" else 0), np.zeros(3, np.int64))
    return path


def chunk_file(path: Path, field: str, k: int = 1) -> Path:
    """The file of chunk `k` of a per-step field (2-D fields have a trailing /0)."""
    f = path / field / "c" / str(k)
    return f / "0" if f.is_dir() else f


def damage(f: Path, how: str) -> None:
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:  # flip 4 bytes in the middle of the compressed chunk
        b = bytearray(f.read_bytes())
        mid = len(b) // 2
        b[mid : mid + 4] = bytes(x ^ 0xFF for x in b[mid : mid + 4])
        f.write_bytes(bytes(b))


def assert_one_line(e: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for p in parts:
        assert p in msg, msg


CASES = [(src, field, how) for src in ("sim", "real") for field in ("obs", "action", "value")
         for how in ("flip", "truncate", "delete") if not (src == "real" and field == "value")]


@pytest.mark.parametrize("source,field,how", CASES)
def test_damaged_chunk_is_one_line_error_naming_the_file(tmp_path, source, field, how):
    path = write_tiny(tmp_path / "data", source)
    intact = Dataset.open(path).read(field)
    f = chunk_file(path, field)
    damage(f, how)
    ds = Dataset.open(path)  # the metadata is intact: open succeeds, reads do not
    kind = {"delete": "is missing", "flip": "checksum mismatch", "truncate": str(f)}[how]
    for read in (lambda: ds.read(field), lambda: ds.read(field, CHUNK, 2 * CHUNK),
                 lambda: ds.read_ranges(field, np.array([0, 40]), np.array([30, 50])),
                 lambda: ds.read_episode(0), ds.verify, lambda: ds.info(verify=True)):
        with pytest.raises(DatasetError) as e:
            read()
        assert_one_line(e, str(f), f"field '{field}'", kind)
    # Rows outside the damaged chunk still read, unchanged.
    np.testing.assert_array_equal(ds.read(field, 0, CHUNK), intact[:CHUNK])
    np.testing.assert_array_equal(ds.read(field, 2 * CHUNK), intact[2 * CHUNK :])
    with pytest.raises(DatasetError) as e:  # a resume refuses to append to it
        Dataset.open_or_create(path, ds.spec)
    assert_one_line(e, str(f))
    Dataset.open(path, writable=True).close()  # ... and released the write lock


def test_damaged_episode_table_is_refused_at_open(tmp_path):
    path = write_tiny(tmp_path / "data", "real")
    damage(path / "episodes" / "c" / "0" / "0", "flip")
    with pytest.raises(DatasetError) as e:
        Dataset.open(path)
    assert_one_line(e, "the episode table", "checksum mismatch", str(path / "episodes" / "c" / "0" / "0"))


def test_all_zero_chunks_are_stored_and_verified(tmp_path):
    path = write_tiny(tmp_path / "data", "sim")
    assert chunk_file(path, "noisy", 0).is_file()  # all-zero data is stored, so absence means damage
    ds = Dataset.open(path)
    assert ds.has_checksums and ds.schema_version == 2
    n_chunks = 6 * 4 + 1  # 6 per-step fields (obs, action, reward, value, expert, noisy) x 4 + 1 episode chunk
    assert ds.verify() == n_chunks
    text = format_info(ds.info(verify=True))
    assert f"all {n_chunks} chunks read: crc32c checksums match, none missing" in text
    chunk_file(path, "noisy", 2).unlink()
    with pytest.raises(DatasetError) as e:
        Dataset.open(path).read("noisy")
    assert_one_line(e, str(chunk_file(path, "noisy", 2)), "is missing")


def test_schema_1_datasets_still_read(tmp_path):
    """A dataset written before checksums: no crc32c codec, schema_version 1, and tensorstore
    skipped all-zero chunks, so a missing flag chunk reads as zeros; a missing obs chunk is an error."""
    path = write_tiny(tmp_path / "data", "sim", checksums=False)
    doc = json.loads((path / "zarr.json").read_text())
    doc["attributes"]["schema_version"] = 1
    (path / "zarr.json").write_text(json.dumps(doc))
    for k in range(4):
        chunk_file(path, "noisy", k).unlink()  # as schema 1 left an all-zero chunk
    ds = Dataset.open(path)
    assert ds.schema_version == 1 and not ds.has_checksums
    assert ds.read("noisy").sum() == 0 and ds.read("obs").shape == (64, 5)
    info = ds.info(verify=True)
    assert info["schema_version"] == 1 and "no checksums in this dataset" in format_info(info)
    chunk_file(path, "obs", 3).unlink()
    with pytest.raises(DatasetError) as e:
        Dataset.open(path).read("obs")
    assert_one_line(e, str(chunk_file(path, "obs", 3)), "is missing")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simdist.cli.main", *args], capture_output=True, text=True,
                          timeout=300)


def test_data_info_cli_verifies_every_chunk(tmp_path):
    from typer.testing import CliRunner

    from simdist.cli.main import app

    path = write_tiny(tmp_path / "data", "sim")
    ok = CliRunner().invoke(app, ["data", "info", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "chunks read: crc32c checksums match" in ok.output
    damage(chunk_file(path, "value"), "flip")
    bad = _cli("data", "info", str(path))  # a real process: main() prints the error line
    assert bad.returncode != 0 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in bad.stderr, bad.stderr
    assert "checksum mismatch" in lines[0] and str(chunk_file(path, "value")) in lines[0]
    fast = CliRunner().invoke(app, ["data", "info", "--no-verify", str(path)])  # metadata only: damage unread
    assert fast.exit_code == 0 and "chunks not verified" in fast.output, fast.output


def test_distill_refuses_a_dataset_with_a_missing_chunk(tiny_dataset, tmp_path):
    from simdist.pipelines.distill import distill, make_config

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset[0].path, data)
    f = chunk_file(data, "obs", 0)
    f.unlink()
    with pytest.raises(DatasetError) as e:
        distill(make_config("cartpole", "tiny", seed=0), data, tmp_path / "model", show_progress=False)
    assert_one_line(e, str(f), "is missing")
    assert not (tmp_path / "model" / "model.json").exists()


def test_finetune_refuses_real_data_with_a_corrupt_chunk(tiny_model, tmp_path):
    from simdist.pipelines.finetune import finetune, make_config

    data = tmp_path / "real"
    spec = DatasetSpec(robot="cartpole", source="real", control_dt=0.02, obs_size=5, action_size=1, labels=False)
    rng = np.random.default_rng(0)
    with Dataset.create(data, spec, chunk_steps=64) as ds:
        ds.append_episodes({"obs": rng.standard_normal((450, 5)), "action": rng.uniform(-1, 1, (450, 1))},
                           np.array([150, 150, 150]), np.full(3, -1), np.zeros(3, np.int64))
    f = chunk_file(data, "obs", 3)
    damage(f, "flip")
    with pytest.raises(DatasetError) as e:
        finetune(make_config("tiny", 0, "dynamics"), tiny_model[1].out, data, tmp_path / "out", show_progress=False)
    assert_one_line(e, str(f), "checksum mismatch")
    assert not (tmp_path / "out" / "model.json").exists()
