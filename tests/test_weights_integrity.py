"""Weights that cannot load corrupt (issue 25): every checkpoint, model and expert snapshot
carries a sha256 digest of its arrays, checked on load. A flipped, truncated or deleted weights
file is one `error:` line, with no traceback and a non-zero exit, from every command that reads
it; a clean round trip is bit-identical."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simdist.checkpointing import DIGEST_KEY, Checkpoints
from simdist.errors import CheckpointError
from simdist.rl.normalizer import RunningStats

MODES = ("flip", "truncate", "delete")
NEEDLE = {"flip": "is corrupt: leaf", "truncate": "is corrupt or truncated", "delete": "is corrupt or truncated"}


def _data_files(step_dir: Path) -> list[Path]:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d" and "ocdbt.process_0" in str(p)]
    assert files, f"no array files under {step_dir}"
    return sorted(files, key=lambda p: (-p.stat().st_size, p.name))


def damage(step_dir: Path, mode: str) -> Path:
    """Damage the largest array file of a checkpoint step: invert 16 bytes in its middle,
    cut it in half, or delete it. Returns the file."""
    f = _data_files(step_dir)[0]
    data = bytearray(f.read_bytes())
    if mode == "flip":
        m = len(data) // 2
        data[m : m + 16] = bytes(b ^ 0xFF for b in data[m : m + 16])
        f.write_bytes(bytes(data))
    elif mode == "truncate":
        f.write_bytes(bytes(data[: len(data) // 2]))
    else:
        f.unlink()
    return f


def _tree():
    rng = np.random.default_rng(0)
    return {
        "params": {"layers": {0: {"kernel": rng.standard_normal((64, 48)).astype(np.float32),
                                  "bias": np.zeros(48, np.float32)},
                              1: {"kernel": jnp.asarray(rng.standard_normal((48, 3)), jnp.float32)}}},
        "opt_state": [np.arange(5, dtype=np.int32), np.asarray(0.5, np.float32)],
        "obs_stats": RunningStats(jnp.ones(4), jnp.full(4, 2.0), jnp.asarray(3.0)),
        "key": np.asarray([1, 2**32 - 1], np.uint32),
        "step": np.asarray(7, np.int64),
    }  # fmt: skip


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and np.array_equal(x.astype(y.dtype), y) and x.tobytes() == y.astype(x.dtype).tobytes()


def test_round_trip_is_bit_identical_and_damage_is_named(tmp_path):
    tree = _tree()
    with Checkpoints(tmp_path / "c") as c:
        c.save(3, tree, {"kind": "test", "config": {"a": 1}})
        c.save(4, tree, {"kind": "test"})
        assert c.meta(3) == {"kind": "test", "config": {"a": 1}}  # the digest is not part of the meta
        digest = c.digest(3)
        assert digest["algorithm"] == "sha256" and "params/layers/0/kernel" in digest["leaves"]
        _assert_same(c.restore(3, tree), tree)
        c.delete(4)
        c.delete(99)  # no such step: nothing happens
        assert c.steps() == [3]
    # Re-saving the meta read back replaces the digest rather than nesting it.
    with Checkpoints(tmp_path / "c") as c:
        c.save(5, tree, {**c.meta(3), DIGEST_KEY: {"stale": True}})
        assert c.digest(5) == digest
        _assert_same(c.restore(5, tree), tree)
    # Another config (a wider layer, a missing leaf) is a mismatch, not corruption.
    wide = jax.tree.map(lambda x: x, tree)
    wide["params"]["layers"][0]["bias"] = np.zeros(49, np.float32)
    fewer = {k: v for k, v in tree.items() if k != "key"}
    with Checkpoints(tmp_path / "c", create=False) as c:
        with pytest.raises(CheckpointError, match=r"/3 does not match this model/config \(params/layers/0/bias has sh"):
            c.restore(3, wide)
        with pytest.raises(CheckpointError, match="does not match this model/config .*unexpected key"):
            c.restore(3, fewer)
    for mode in MODES:
        d = tmp_path / mode
        shutil.copytree(tmp_path / "c", d)
        damage(d / "3", mode)
        with Checkpoints(d, create=False) as c, pytest.raises(CheckpointError) as e:
            c.restore(3, tree)
        msg = str(e.value)
        assert "\n" not in msg and f"{d}/3 " in msg and NEEDLE[mode] in msg, msg
        if mode == "flip":
            assert "params/layers/0/kernel differs from its saved sha256 digest" in msg
        assert "does not match" not in msg


def test_model_save_load_round_trip_is_bit_identical(tiny_model, tmp_path):
    from flax import nnx

    from simdist.models.io import load_model, save_model

    model, meta = load_model(tiny_model[1].out)
    save_model(tmp_path / "copy", model, {"robot": meta["robot"]})
    again, _ = load_model(tmp_path / "copy", "cartpole")
    with Checkpoints(tmp_path / "copy" / "weights", create=False) as c:
        assert len(c.digest(0)["leaves"]) == len(jax.tree.leaves(nnx.state(model)))
    _assert_same(nnx.to_pure_dict(nnx.state(again)), nnx.to_pure_dict(nnx.state(model)))
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["model.json", "weights"]  # no temp left


def test_checkpoints_saved_before_digests_still_load(tmp_path):
    tree = _tree()
    with Checkpoints(tmp_path / "c") as c:
        c.save(1, tree, {"kind": "test"})
    meta_file = tmp_path / "c" / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != DIGEST_KEY}))
    with Checkpoints(tmp_path / "c", create=False) as c:
        assert c.digest(1) is None
        _assert_same(c.restore(1, tree), tree)  # unverified, as before
        wide = dict(tree, key=np.zeros(3, np.uint32))
        with pytest.raises(CheckpointError, match="does not match this model/config"):
            c.restore(1, wide)
        # Recording the digest afterwards changes only the metadata, and then guards the arrays.
        before = {p: p.read_bytes() for p in (tmp_path / "c" / "1" / "state").rglob("*") if p.is_file()}
        assert c.record_digest(1, tree) == meta[DIGEST_KEY]
    after = {p: p.read_bytes() for p in (tmp_path / "c" / "1" / "state").rglob("*") if p.is_file()}
    assert after == before
    damage(tmp_path / "c" / "1", "flip")
    with Checkpoints(tmp_path / "c", create=False) as c, pytest.raises(CheckpointError, match="is corrupt: leaf"):
        c.restore(1, tree)


def test_shipped_artifacts_carry_their_digest(tmp_path):
    """The quadruped's pretrained model and expert have a digest, so a flip in them is caught."""
    from simdist.models.io import load_model
    from simdist.robots import get_robot

    robot = get_robot("quadruped")
    model_dir, expert_dir = robot.pretrained("model"), robot.pretrained("expert")
    with Checkpoints(model_dir / "weights", create=False) as c:
        assert c.digest(0) is not None
    with Checkpoints(expert_dir / "snapshots", create=False) as c:
        assert all(c.digest(s) is not None for s in c.steps())
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    damage(copy / "weights" / "0", "flip")
    with pytest.raises(CheckpointError, match=r"weights/0 is corrupt: leaf state/"):
        load_model(copy, "quadruped")


def _main(capfd, *args) -> tuple[int, str, str]:
    """Run the `simdist` entry point in this process; (exit code, stdout, stderr)."""
    from simdist.cli.main import main

    argv = sys.argv
    sys.argv = ["simdist", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out, err = capfd.readouterr()
    return code, out, err


def _assert_one_line_error(code, out, err, *needles):
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in err + out and "Event loop is closed" not in err + out


DEPLOY = ("--robot", "cartpole", "--episodes", "1", "--episode-length", "3", "--mppi", "tiny", "--no-progress")


@pytest.mark.parametrize("mode", MODES)
def test_deploy_refuses_a_damaged_model_or_expert(mode, tiny_model, tiny_expert, tmp_path, capfd):
    model = tmp_path / "model"
    shutil.copytree(tiny_model[1].out, model, ignore=shutil.ignore_patterns("checkpoints"))
    damage(model / "weights" / "0", mode)
    _assert_one_line_error(*_main(capfd, "deploy", "--model", model, *DEPLOY), f"{model}/weights/0 ", NEEDLE[mode])
    expert = tmp_path / "expert"
    shutil.copytree(tiny_expert[1], expert, ignore=shutil.ignore_patterns("checkpoints"))
    final = max(int(p.name) for p in (expert / "snapshots").iterdir() if p.name.isdigit())
    damage(expert / "snapshots" / str(final), mode)
    _assert_one_line_error(*_main(capfd, "deploy", "--expert", expert, *DEPLOY),
                           f"{expert}/snapshots/{final} ", NEEDLE[mode])  # fmt: skip


def test_finetune_refuses_a_damaged_parent_and_writes_nothing(tiny_model, tmp_path, capfd):
    from simdist.data.dataset import Dataset, DatasetSpec

    model = tmp_path / "model"
    shutil.copytree(tiny_model[1].out, model, ignore=shutil.ignore_patterns("checkpoints"))
    damage(model / "weights" / "0", "flip")
    real = tmp_path / "real"
    ds = Dataset.create(real, DatasetSpec(robot="cartpole", source="real", control_dt=0.02, obs_size=5,
                                          action_size=1, labels=False))  # fmt: skip
    n = 40
    rng = np.random.default_rng(0)
    ds.append_episodes({"obs": rng.standard_normal((n, 5)).astype(np.float32),
                        "action": rng.uniform(-1, 1, (n, 1)).astype(np.float32)},
                       np.asarray([n]), np.full(1, -1, np.int64), np.zeros(1, np.int64))  # fmt: skip
    ds.close()
    out = tmp_path / "ft"
    code, o, e = _main(capfd, "finetune", "--model", model, "--real-data", real, "--out", out, "--preset", "tiny",
                       "--no-progress")  # fmt: skip
    _assert_one_line_error(code, o, e, f"{model}/weights/0 is corrupt: leaf")
    assert not out.exists()


@pytest.mark.parametrize("mode", MODES)
def test_resuming_from_a_damaged_training_checkpoint_is_one_line(mode, tiny_expert, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(tiny_expert[1], run)
    latest = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    damage(run / "checkpoints" / str(latest), mode)
    code, out, err = _main(capfd, "train-expert", "--robot", "cartpole", "--preset", "tiny", "--out", run,
                           "--no-progress")  # fmt: skip
    _assert_one_line_error(code, out, err, f"{run}/checkpoints/{latest} ", NEEDLE[mode])


def test_a_real_process_prints_one_line_for_a_truncated_expert(tiny_expert, tmp_path):
    """The case that used to print dozens of `RuntimeError: Event loop is closed` tracebacks:
    tensorstore finishing the other reads of a failed step after orbax closed its event loop.
    A real interpreter, so what it prints while exiting counts too."""
    expert = tmp_path / "expert"
    shutil.copytree(tiny_expert[1], expert, ignore=shutil.ignore_patterns("checkpoints"))
    for manifest in (expert / "snapshots").glob("*/state/manifest.ocdbt"):
        manifest.write_bytes(manifest.read_bytes()[:10])
    for f in (expert / "snapshots").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    proc = subprocess.run([sys.executable, "-m", "simdist.cli.main", "deploy", "--expert", str(expert), *DEPLOY],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    _assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, f"{expert}/snapshots/0 ", "is corrupt or truncated")
