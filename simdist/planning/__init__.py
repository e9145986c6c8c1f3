"""simdist.planning: MPPI over a latent world model (generic over the model's pure functions)."""

from __future__ import annotations

from simdist.planning.mppi import (
    PRESETS,
    MPPIConfig,
    PlanModel,
    PlanState,
    candidate_returns,
    colored_noise,
    elite_statistics,
    fit_chunk,
    get_preset,
    init_plan_state,
    make_planner,
    measure_latency,
    plan,
    shift_plan,
    warm_start_state,
)

__all__ = [
    "PRESETS",
    "MPPIConfig",
    "PlanModel",
    "PlanState",
    "candidate_returns",
    "colored_noise",
    "elite_statistics",
    "fit_chunk",
    "get_preset",
    "init_plan_state",
    "make_planner",
    "measure_latency",
    "plan",
    "shift_plan",
    "warm_start_state",
]
