"""simdist.models."""
