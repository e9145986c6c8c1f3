"""Errors that the CLI turns into one clear line and a non-zero exit code."""

from __future__ import annotations


def short_reason(e: BaseException, limit: int = 200, with_type: bool = True) -> str:
    """One line of an exception, for embedding in a one-line error message: whitespace folded,
    cut at `limit` characters, prefixed by the exception's type unless `with_type` is False."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}" if with_type else text


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
