"""simdist.training: the one training loop that every trainer runs (see `loop`)."""

from simdist.training.loop import (
    FAIL_POINTS,
    FailAt,
    InjectedFailure,
    LoopResult,
    RunSpec,
    Stage,
    fail_at_from_env,
    prepare_run_dir,
    run,
)

__all__ = [
    "FAIL_POINTS",
    "FailAt",
    "InjectedFailure",
    "LoopResult",
    "RunSpec",
    "Stage",
    "fail_at_from_env",
    "prepare_run_dir",
    "run",
]
