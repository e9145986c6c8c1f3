"""simdist.planning."""
