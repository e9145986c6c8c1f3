"""Environments: a generic MJX env over a robot's `Task`."""

from simdist.envs.mjx_env import EnvState, MjxEnv
from simdist.envs.task import EnvConfig, RandomizedParam, Task

__all__ = ["EnvConfig", "EnvState", "MjxEnv", "RandomizedParam", "Task"]
