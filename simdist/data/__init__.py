"""simdist.data."""
