"""Shared fixtures. The tiny cartpole expert, its dataset and its world model are built once per
test run: under pytest-xdist the first worker that needs one builds it under a file lock in the
run's shared temporary directory, and the other workers load it from there."""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from pathlib import Path

import jax
import pytest

# Reuse compiled XLA programs across tests and across runs of the suite.
_CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"
jax.config.update("jax_compilation_cache_dir", os.environ.get("SIMDIST_JAX_CACHE", str(_CACHE)))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(scope="session")
def cartpole_robot():
    from simdist.robots import get_robot

    return get_robot("cartpole")


@pytest.fixture(scope="session")
def cartpole_env(cartpole_robot):
    from simdist.envs import MjxEnv

    cfg = cartpole_robot.expert_config("tiny")
    return MjxEnv(cartpole_robot.make_task(cfg.env))


def _built_once(tmp_path_factory, name: str, build):
    """``build(directory)`` once per test run; its (picklable) result is shared by xdist workers.

    Without xdist it simply builds in a fresh temporary directory.
    With it, the workers' temporary directories share a parent; the first worker to get the
    lock builds there and pickles the result (atomically, after the build), the others wait
    for the lock and unpickle it. Tests must treat these artifacts as read-only (copy first).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / "shared-fixtures"
    root.mkdir(exist_ok=True)
    done = root / f"{name}.pkl"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.exists():
            return pickle.loads(done.read_bytes())
        shutil.rmtree(root / name, ignore_errors=True)  # what a worker's failed build left
        (root / name).mkdir()
        result = build(root / name)
        tmp = root / f"{name}.pkl.tmp"
        tmp.write_bytes(pickle.dumps(result))
        tmp.replace(done)
        return result


@pytest.fixture(scope="session")
def tiny_expert(tmp_path_factory):
    """A tiny-preset cartpole expert run: (TrainResult, run directory)."""

    def build(d: Path):
        from simdist.pipelines.train_expert import make_config, train_expert

        out = d / "cartpole"
        result = train_expert(make_config("cartpole", "tiny", seed=0), out, show_progress=False)
        return result, out

    return _built_once(tmp_path_factory, "expert", build)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_expert, tmp_path_factory):
    """A tiny-preset Stage 2 dataset generated from the tiny expert: (Dataset, GenerateConfig)."""
    from simdist.data.dataset import Dataset

    def build(d: Path):
        from simdist.pipelines.generate_data import generate_data, make_config

        out = d / "cartpole"
        cfg = make_config("cartpole", "tiny", seed=0)
        generate_data(cfg, tiny_expert[1], out, show_progress=False)
        return out, cfg

    out, cfg = _built_once(tmp_path_factory, "data", build)
    return Dataset.open(out), cfg


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory):
    """A tiny-preset world model distilled from the tiny dataset: (DistillConfig, DistillResult).

    `result.out` is a model directory (model.json + weights/) that deploy and finetune accept.
    """

    def build(d: Path):
        from simdist.pipelines.distill import distill, make_config

        cfg = make_config("cartpole", "tiny", seed=0)
        return cfg, distill(cfg, tiny_dataset[0].path, d / "model", show_progress=False)

    return _built_once(tmp_path_factory, "distill", build)


def array_fields(model) -> dict:
    """The numeric array fields of an MJX (or MuJoCo) model, as numpy: name -> array. For
    tests that check which fields randomisation or a gap changed."""
    import dataclasses

    import jax
    import numpy as np

    out = {}
    for f in dataclasses.fields(model):
        v = getattr(model, f.name)
        if isinstance(v, (jax.Array, np.ndarray)) and np.issubdtype(np.asarray(v).dtype, np.number):
            out[f.name] = np.asarray(v)
    return out
