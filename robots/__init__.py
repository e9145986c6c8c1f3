"""The robots shipped with simdist: one package each (MJCF, task, randomisation, gaps, presets
of every stage, sim-real adapter, optional pretrained artifacts) that registers itself.

The contract and the registry live in the library (`simdist.robot`); they are re-exported here
so that `from simdist.robots import get_robot` keeps working. Robot packages in this folder are
found without being listed anywhere (see robots/README.md).
"""

from simdist.robot import PRESETS, Robot, get_robot, register_robot, robot_names

__all__ = ["PRESETS", "Robot", "get_robot", "register_robot", "robot_names"]
