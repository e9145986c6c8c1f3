"""The random-gap battery's sampler: N reality gaps for a robot, drawn from a seed.

A robot declares how each of its gap keys may leave the training simulator (`Robot.battery`,
a tuple of `Shift`): the key's training range, and the bands outside it that the battery
draws from. For every gap, each key is moved out of its training range with probability `p`
(independently, so keys combine); a gap that moved no key gets one, chosen uniformly. A moved
key picks the band below or the band above the training range with equal probability (the
one there is, when only one exists) and draws its value in that band, log-uniformly for
multipliers and uniformly for absolute values (whole numbers for integer keys; others with 3
decimals, at least 0.001 outside the training range).

Deterministic per seed: the same (robot, n, seed) gives the same gaps, on any machine.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from simdist.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Shift:
    """How the battery moves one gap key out of its training range."""

    key: str
    train: tuple[float, float]  # the range the training simulator randomises over
    below: tuple[float, float] | None = None  # band under the training range, or None
    above: tuple[float, float] | None = None  # band over it, or None
    p: float = 0.4  # probability that a gap moves this key
    log: bool = True  # draw log-uniformly (multipliers); False: uniformly
    integer: bool = False

    def __post_init__(self):
        lo, hi = self.train
        if self.below is None and self.above is None:
            raise ConfigError(f"battery key '{self.key}': needs a band below or above its training range")
        if self.below is not None and not (self.below[0] <= self.below[1] <= lo):
            raise ConfigError(f"battery key '{self.key}': band below {self.below} must end at or under {lo}")
        if self.above is not None and not (hi <= self.above[0] <= self.above[1]):
            raise ConfigError(f"battery key '{self.key}': band above {self.above} must start at or over {hi}")
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"battery key '{self.key}': p must be in [0, 1], got {self.p}")
        if self.log and any(b is not None and b[0] <= 0 for b in (self.below, self.above)):
            raise ConfigError(f"battery key '{self.key}': log-uniform bands must be > 0")

    def draw(self, rng: np.random.Generator) -> float:
        bands = [b for b in (self.below, self.above) if b is not None]
        band = bands[int(rng.integers(len(bands)))] if len(bands) > 1 else bands[0]
        lo, hi = band
        if self.integer:
            return float(rng.integers(int(math.ceil(lo)), int(math.floor(hi)) + 1))
        # Values have 3 decimals and stay at least 0.001 clear of the training range.
        if band is self.below:
            hi = min(hi, self.train[0] - 1e-3)
        else:
            lo = max(lo, self.train[1] + 1e-3)
        v = np.exp(rng.uniform(np.log(lo), np.log(hi))) if self.log else rng.uniform(lo, hi)
        return round(float(v), 3)

    def outside(self, value: float) -> bool:
        """True when `value` lies outside the training range (strictly)."""
        return value < self.train[0] or value > self.train[1]


def robot_battery(robot) -> tuple[Shift, ...]:
    if isinstance(robot, str):
        from simdist.robot import get_robot

        robot = get_robot(robot)
    shifts = tuple(getattr(robot, "battery", None) or ())
    if not shifts:
        raise ConfigError(f"robot '{robot.name}' declares no gap battery (Robot.battery)")
    return shifts


def sample_gaps(shifts: Sequence[Shift], n: int, seed: int) -> list[dict[str, float]]:
    """`n` gaps (key -> value; keys left in their training range are absent), from `seed`."""
    if n < 1:
        raise ConfigError(f"the battery needs n >= 1 gaps, got {n}")
    shifts = tuple(shifts)
    rng = np.random.default_rng([int(seed), 0x6A95])
    out = []
    for _ in range(n):
        moved = [s for s in shifts if rng.uniform() < s.p]
        if not moved:
            moved = [shifts[int(rng.integers(len(shifts)))]]
        out.append({s.key: (int(s.draw(rng)) if s.integer else s.draw(rng)) for s in moved})
    return out


def gap_spec(gap: dict[str, float]) -> str:
    """The gap as the command line's `key=value,...` form."""
    return ",".join(f"{k}={v:g}" for k, v in gap.items()) or "none"
