"""A robot defined in tests/tiny_robot (not under robots/) runs every stage through the
pipelines: train-expert, generate-data, distill, deploy (recording real data) and finetune,
with its own tiny presets. Adding it needed no edit outside its folder. Also: the registry's
contract and the PPO config's minibatch check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tests.tiny_robot as tiny  # registers `tiny_slider`
from simdist.errors import ConfigError, UnknownRobotError
from simdist.robot import Robot, get_robot, register_robot, robot_names

NAME = "tiny_slider"


def test_registry_finds_shipped_robots_and_registered_ones():
    names = robot_names()
    assert names[:2] == ["cartpole", "quadruped"] and NAME in names
    assert get_robot(NAME) is tiny.ROBOT
    from simdist.robots import get_robot as reexported

    assert reexported is get_robot
    with pytest.raises(UnknownRobotError, match="known robots: cartpole, quadruped"):
        get_robot("no-such-robot")
    clash = Robot(name=NAME, description="", task_cls=object, env_config_cls=object, expert_presets={})
    with pytest.raises(ConfigError, match="already registered"):
        register_robot(clash)
    register_robot(tiny.ROBOT)  # the same robot again: a no-op


def test_presets_come_from_the_robot_and_generic_ones_otherwise():
    from simdist.models.finetune_config import FINETUNE_PRESETS, finetune_config
    from simdist.planning.mppi import PRESETS, get_preset

    assert get_preset("tiny", NAME).samples == 32 and get_preset("tiny") == PRESETS["tiny"]
    with pytest.raises(ConfigError, match="no mppi preset 'default'"):
        get_preset("default", NAME)
    assert finetune_config("tiny", 0, "residual", robot=NAME).steps == 150
    assert finetune_config("tiny", 0) == FINETUNE_PRESETS["tiny"](0)
    # The shipped robots' presets are the values they had before they moved into their folders.
    for robot in ("cartpole", "quadruped"):
        for p in ("tiny", "default", "paper"):
            assert get_preset(p, robot) == PRESETS[p]
            assert finetune_config(p, 3, "residual", robot=robot) == finetune_config(p, 3, "residual")


def test_ppo_batch_must_divide_into_minibatches():
    from simdist.config import with_overrides
    from simdist.rl.config import PPOConfig

    with pytest.raises(ConfigError, match=r"64 x 16 = 1024 steps does not divide into num_minibatches = 3"):
        PPOConfig(num_envs=64, unroll_length=16, num_minibatches=3)
    cfg = get_robot(NAME).expert_config("tiny")
    with pytest.raises(ConfigError) as e:
        with_overrides(cfg, {"ppo.num_minibatches": 5})
    assert "\n" not in str(e.value)


def test_every_stage_runs_on_a_robot_defined_in_tests(tmp_path):
    from simdist.data.dataset import Dataset
    from simdist.pipelines import deploy as dep
    from simdist.pipelines import distill as dst
    from simdist.pipelines import finetune as fin
    from simdist.pipelines import generate_data as gen
    from simdist.pipelines import train_expert as tex

    expert = tex.train_expert(tex.make_config(NAME, "tiny", 0), tmp_path / "expert", show_progress=False)
    m = expert.metrics
    # The expert learnt the task: it earns far more than a random policy (about twice as much).
    assert m["expert_return_mean"] > 1.5 * m["random_return_mean"], m

    gen.generate_data(gen.make_config(NAME, "tiny", 0), tmp_path / "expert", tmp_path / "data", show_progress=False)
    ds = Dataset.open(tmp_path / "data")
    assert ds.spec.robot == NAME and ds.spec.obs_size == 2 and ds.n_transitions >= 6_400
    ds.close()

    res = dst.distill(dst.make_config(NAME, "tiny", 0), tmp_path / "data", tmp_path / "model", show_progress=False)
    r = res.metrics
    assert (tmp_path / "model" / "model.json").is_file()
    # The world model learnt the reward and value it will plan with (held-out R²).
    assert r["reward_r2_first_5"] > 0.5 and r["value_r2_first_5"] > 0.2, r

    # Deploy the planner on the gapped sim-real robot and record real data.
    cfg = dep.DeployConfig(robot=NAME, episodes=5, episode_length=60, mppi="tiny", gap="default", seed=0)
    run = dep.deploy(cfg, model_dir=tmp_path / "model", record=tmp_path / "real", show_progress=False)
    assert run.recorded_episodes == 5 and run.recorded_transitions == 300
    assert all(r is not None and np.isfinite(r) for r in run.returns) and run.steps == [60] * 5
    real = Dataset.open(tmp_path / "real")
    assert real.spec.source == "real" and real.n_transitions == 300 and real.n_episodes == 5
    real.close()

    ft = fin.finetune(fin.make_config("tiny", 0, "dynamics", robot=NAME), tmp_path / "model", tmp_path / "real",
                      tmp_path / "finetuned", show_progress=False)
    fm = ft.metrics
    assert fm["latent_error_after"] < fm["latent_error_before"], fm
    # The finetuned model deploys (its directory is a model directory like distill's).
    again = dep.deploy(dataclasses.replace(cfg, episodes=1), model_dir=tmp_path / "finetuned", show_progress=False)
    assert again.steps == [60] and again.recorded is None
