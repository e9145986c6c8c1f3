"""Reality gaps: how the `sim-real` robot differs from the training simulator.

A gap is a dict `key -> value`. Every robot supports the generic keys

- `latency`: actuation latency in whole control steps (int >= 0): the action sent at control
  step k is applied at step k + latency;
- `obs_noise`: std of Gaussian noise added to every observation entry, in observation units;

and its own physical keys, as multipliers of the nominal MJCF value (the cartpole's:
`pole_mass`, `pole_length`, `cart_friction`, `motor_gain`, `hinge_damping`). A robot brings
them in its `Robot` (simdist.robot): `gap_keys` (its physical keys), `gaps` (named gaps),
`gap_notes` (one line of why per named gap) and `apply_gap(mj_model, gap)`.

On the command line a gap is a NAME, `key=value,key=value`, a NAME with overrides
(`default,latency=2`), or the path of a JSON file holding an object of key -> value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

from simdist.errors import RobotError


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _nonneg(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


@dataclasses.dataclass(frozen=True)
class GapKey:
    """One gap key: what it means and which values are valid."""

    name: str
    doc: str
    integer: bool = False
    # Returns None when the value is valid, else what a valid value is ("must be > 0").
    check: Callable[[float], str | None] = _positive
    # A multiplier of the nominal value (shown as "x2"); otherwise an absolute value ("= 10").
    relative: bool = False


GENERIC_KEYS: dict[str, GapKey] = {
    "latency": GapKey("latency", "actuation latency in whole control steps", integer=True, check=_nonneg),
    "obs_noise": GapKey("obs_noise", "std of Gaussian sensor noise on every observation entry", check=_nonneg),
}
GENERIC_DEFAULTS: dict[str, float] = {"latency": 0, "obs_noise": 0.0}


def multiplier(name: str, doc: str, *, allow_zero: bool = False) -> GapKey:
    """A physical key given as a multiplier of the nominal MJCF value (1 = no change)."""
    return GapKey(name, doc, check=_nonneg if allow_zero else _positive, relative=True)


# ---- the robot's gaps ------------------------------------------------------------------
def _robot_name(robot) -> str:
    return robot if isinstance(robot, str) else robot.name


def _robot(robot):
    if isinstance(robot, str):
        from simdist.robot import get_robot

        return get_robot(robot)
    return robot


def gap_keys(robot) -> dict[str, GapKey]:
    """All keys a gap for this robot may set: the generic ones and the robot's own."""
    keys = dict(GENERIC_KEYS)
    keys.update(getattr(_robot(robot), "gap_keys", None) or {})
    return keys


def robot_gaps(robot) -> dict[str, dict[str, float]]:
    """The robot's named gaps (`Robot.gaps`), with "none" (no gap) always among them."""
    gaps = dict(getattr(_robot(robot), "gaps", None) or {})
    gaps.setdefault("none", {})
    return gaps


def gap_notes(robot) -> dict[str, str]:
    return dict(getattr(_robot(robot), "gap_notes", None) or {})


# ---- parsing ---------------------------------------------------------------------------
def _keys_line(robot: str, keys) -> str:
    return f"keys: {', '.join(sorted(keys))}"


def _check_value(key: str, raw: Any, keys: Mapping[str, GapKey], robot: str):
    rule = keys[key] if isinstance(keys, Mapping) else None
    if rule is None:
        rule = GENERIC_KEYS.get(key, GapKey(key, ""))
    if isinstance(raw, bool):
        raise RobotError(f"bad value {raw!r} for gap key '{key}' of {robot}: expected a number")
    try:
        v = float(raw)
    except (TypeError, ValueError):
        raise RobotError(f"bad value {raw!r} for gap key '{key}' of {robot}: expected a number") from None
    if not math.isfinite(v):
        raise RobotError(f"bad value {raw!r} for gap key '{key}' of {robot}: must be finite")
    if rule.integer:
        if v != int(v):
            raise RobotError(f"bad value {raw!r} for gap key '{key}' of {robot}: must be a whole number")
        v = int(v)
    problem = rule.check(v)
    if problem is not None:
        raise RobotError(f"bad value {raw!r} for gap key '{key}' of {robot}: {key} {problem}")
    return v


def _normalise_key(key: str) -> str:
    return key.strip().replace("-", "_")


def _validated(items: Mapping[str, Any], keys, robot: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for raw_key, raw in items.items():
        key = _normalise_key(str(raw_key))
        if key not in keys:
            raise RobotError(f"unknown gap key '{raw_key}' for {robot}; {_keys_line(robot, keys)}")
        out[key] = _check_value(key, raw, keys, robot)
    return out


def parse_gap(
    spec: str | Path | Mapping[str, Any] | None,
    robot_gaps: Mapping[str, Mapping[str, float]],
    known_keys: set[str] | Mapping[str, GapKey],
    *,
    robot: str = "this robot",
) -> dict[str, float]:
    """Turn a gap given by the user into a validated dict key -> value.

    `spec` is a NAME of `robot_gaps`, `key=value,key=value`, `NAME,key=value,...` (a named
    gap with overrides), a path to a JSON file of key -> value, or a dict. `None` or an empty
    string is no gap. Raises `RobotError` with one line naming the valid names or keys.
    `latency` comes back as an int, other values as floats; keys not given are absent (the
    backend uses 0 latency, no noise and multipliers of 1 for them).
    """
    keys = known_keys if isinstance(known_keys, Mapping) else {k: GENERIC_KEYS.get(k, GapKey(k, "")) for k in known_keys}
    names = ", ".join(sorted(robot_gaps))
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return _validated(spec, keys, robot)
    if isinstance(spec, Path) or (isinstance(spec, str) and "=" not in spec and (spec.endswith(".json") or Path(spec).is_file())):
        path = Path(spec)
        if not path.is_file():
            raise RobotError(f"gap file '{path}' not found; give a gap name ({names}), key=value pairs or a JSON file")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise RobotError(f"gap file '{path}' is not valid JSON: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise RobotError(f"gap file '{path}' must hold a JSON object of key -> value; {_keys_line(robot, keys)}")
        return _validated(data, keys, robot)
    if not isinstance(spec, str):
        raise RobotError(f"a gap is a name, key=value pairs, a JSON file or a dict, not {type(spec).__name__}")

    out: dict[str, float] = {}
    tokens = [t.strip() for t in spec.split(",")]
    tokens = [t for t in tokens if t]
    for i, tok in enumerate(tokens):
        if "=" in tok:
            key, _, raw = tok.partition("=")
            out.update(_validated({key.strip(): raw.strip()}, keys, robot))
        elif i == 0:
            if tok not in robot_gaps:
                raise RobotError(
                    f"unknown gap '{tok}' for {robot}; gaps: {names} (or key=value,... or a JSON file)"
                )
            out.update(_validated(dict(robot_gaps[tok]), keys, robot))
        else:
            raise RobotError(f"bad gap '{spec}': only the first item may be a gap name, the rest must be key=value")
    return out


def resolve_gap(robot, spec) -> dict[str, float]:
    """`parse_gap` with the robot's own named gaps and keys."""
    return parse_gap(spec, robot_gaps(robot), gap_keys(robot), robot=_robot_name(robot))


def full_gap(robot, gap: Mapping[str, float]) -> dict[str, float]:
    """The gap with every key of the robot filled in (0 latency, no noise, multipliers 1)."""
    out = {k: 1.0 for k in gap_keys(robot)}
    out.update(GENERIC_DEFAULTS)
    out.update(gap)
    return out


# ---- describing ------------------------------------------------------------------------
def describe_gap(gap: Mapping[str, float], keys: Mapping[str, GapKey] | None = None) -> str:
    """A short text of a gap's values: 'pole_mass x2, motor_gain x0.6, latency 1 step'.
    Keys that `keys` marks as absolute (not multipliers) show as 'slope = 10'."""
    if not gap:
        return "no gap"
    parts = []
    for k in sorted(gap, key=lambda k: (k in GENERIC_KEYS, k)):
        v = gap[k]
        if k == "latency":
            parts.append(f"latency {int(v)} step{'s' if int(v) != 1 else ''}")
        elif k == "obs_noise":
            parts.append(f"obs_noise {v:g}")
        elif keys is not None and k in keys and not keys[k].relative:
            parts.append(f"{k} = {v:g}")
        else:
            parts.append(f"{k} x{v:g}")
    return ", ".join(parts)


def describe_gaps(robot) -> dict[str, str]:
    """name -> 'values: why', one line per named gap, for `simdist robots`."""
    notes = gap_notes(robot)
    keys = gap_keys(robot)
    out = {}
    for name, gap in robot_gaps(robot).items():
        text = describe_gap(gap, keys)
        if notes.get(name):
            text = f"{text}: {notes[name]}"
        out[name] = text
    return out
