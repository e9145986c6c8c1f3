"""simdist.backends."""
