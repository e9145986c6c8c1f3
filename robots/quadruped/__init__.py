"""The quadruped: a Go2-class robot following velocity commands at 50 Hz (issue 5).

Importing this package registers the robot (see robots/README.md): task, terrain and
randomisation in task.py, reality gaps in gaps.py, every stage's presets in presets.py, the
sim-real adapter in sim_real.py, the shipped expert and world model in pretrained/.
"""

from __future__ import annotations

from pathlib import Path

from simdist.robot import Robot, register_robot
from simdist.robots.quadruped import gaps, presets
from simdist.robots.quadruped.presets import OBS_SIZE  # noqa: F401  (127: 50 proprioceptive + 77 height scan)
from simdist.robots.quadruped.sim_real import QuadrupedAdapter
from simdist.robots.quadruped.task import QuadrupedEnvConfig, QuadrupedTask

ROBOT = register_robot(Robot(
    name="quadruped",
    description="Go2-class quadruped (15 kg, 12 PD joints); velocity-command locomotion with a height scan, 50 Hz",
    task_cls=QuadrupedTask,
    env_config_cls=QuadrupedEnvConfig,
    expert_presets=presets.EXPERT,
    gaps=gaps.GAPS,
    data_presets=presets.DATA,
    distill_presets=presets.DISTILL,
    finetune_presets=presets.FINETUNE,
    mppi_presets=presets.MPPI_PRESETS,
    gap_keys=gaps.KEYS,
    gap_notes=gaps.NOTES,
    apply_gap=gaps.apply_gap,
    battery=gaps.BATTERY,
    sim_real_adapter=QuadrupedAdapter,
    root=Path(__file__).parent,
))
