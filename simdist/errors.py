"""Errors that the CLI turns into one clear line and a non-zero exit code."""

from __future__ import annotations


class SimdistError(Exception):
    """A user-facing error: bad input, a missing or mismatched artifact, a diverged run.

    The message must stand on its own on one line; the CLI prints it without a traceback.
    """


class UnknownRobotError(SimdistError):
    pass


class CheckpointError(SimdistError):
    pass


class ConfigError(SimdistError, ValueError):
    """A bad config value: an unknown key, a wrong type, or a value the config rejects. Also a
    ValueError, so code that validates values can raise it where a ValueError is expected."""


class TrainingDivergedError(SimdistError):
    pass


class DatasetError(SimdistError):
    """A missing, corrupt or mismatched dataset (wrong robot, missing field, wrong shape)."""


class RobotError(SimdistError):
    """A robot backend problem: unknown gap, bad gap value, connection or safety stop."""


class PlannerError(SimdistError):
    """The planner produced something unusable (NaN actions) or got a bad model."""
