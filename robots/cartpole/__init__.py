"""The cartpole: a cart on a rail with a hinged pole, swing-up and balance at 50 Hz.

Importing this package registers the robot (see robots/README.md): task and randomisation in
task.py, reality gaps in gaps.py, every stage's presets in presets.py, the sim-real adapter
in sim_real.py.
"""

from __future__ import annotations

from pathlib import Path

from simdist.robot import Robot, register_robot
from simdist.robots.cartpole import gaps, presets
from simdist.robots.cartpole.sim_real import CartpoleAdapter
from simdist.robots.cartpole.task import CartpoleEnvConfig, CartpoleTask

ROBOT = register_robot(Robot(
    name="cartpole",
    description="cart on a rail with a hinged pole; swing-up and balance, 1 motor, 50 Hz",
    task_cls=CartpoleTask,
    env_config_cls=CartpoleEnvConfig,
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
    sim_real_adapter=CartpoleAdapter,
    root=Path(__file__).parent,
))
