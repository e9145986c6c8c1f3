"""Shared fixtures. The tiny cartpole expert is trained once per test session."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def tiny_expert(tmp_path_factory):
    """A tiny-preset cartpole expert run: (TrainResult, run directory)."""
    from simdist.pipelines.train_expert import make_config, train_expert

    out = tmp_path_factory.mktemp("expert") / "cartpole"
    cfg = make_config("cartpole", "tiny", seed=0)
    result = train_expert(cfg, out, show_progress=False)
    return result, out


@pytest.fixture(scope="session")
def tiny_dataset(tiny_expert, tmp_path_factory):
    """A tiny-preset Stage 2 dataset generated from the tiny expert: (Dataset, GenerateConfig)."""
    from simdist.data.dataset import Dataset
    from simdist.pipelines.generate_data import generate_data, make_config

    out = tmp_path_factory.mktemp("data") / "cartpole"
    cfg = make_config("cartpole", "tiny", seed=0)
    generate_data(cfg, tiny_expert[1], out, show_progress=False)
    return Dataset.open(out), cfg


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory):
    """A tiny-preset world model distilled from the tiny dataset: (DistillConfig, DistillResult).

    `result.out` is a model directory (model.json + weights/) that deploy and finetune accept.
    """
    from simdist.pipelines.distill import distill, make_config

    ds, _ = tiny_dataset
    cfg = make_config("cartpole", "tiny", seed=0)
    out = tmp_path_factory.mktemp("distill") / "model"
    result = distill(cfg, ds.path, out, show_progress=False)
    return cfg, result


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
