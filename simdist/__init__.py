"""simdist: Simulation Distillation for sim-to-real robot learning, in pure JAX."""

from __future__ import annotations

from simdist.errors import SimdistError

__version__ = "0.1.0"

__all__ = ["SimdistError", "__version__"]
