"""A robot defined outside robots/ for the test suite: a 1-DoF point mass on a rail
(tests/test_tiny_robot.py). Importing it registers `tiny_slider`, as a robot package does;
nothing outside this folder names it."""

from __future__ import annotations

from pathlib import Path

from simdist.robot import Robot, register_robot

from tests.tiny_robot import presets
from tests.tiny_robot.task import GAP_KEYS, GAP_NOTES, GAPS, SliderAdapter, SliderEnvConfig, SliderTask, apply_gap

ROBOT = register_robot(Robot(
    name=presets.NAME,
    description="test robot: a point mass on a rail, brought to the origin",
    task_cls=SliderTask,
    env_config_cls=SliderEnvConfig,
    expert_presets={"tiny": presets.expert},
    data_presets={"tiny": presets.data},
    distill_presets={"tiny": presets.distill},
    finetune_presets={"tiny": presets.finetune},
    mppi_presets=presets.MPPI,
    gaps=GAPS,
    gap_keys=GAP_KEYS,
    gap_notes=GAP_NOTES,
    apply_gap=apply_gap,
    sim_real_adapter=SliderAdapter,
    root=Path(__file__).parent,
))
