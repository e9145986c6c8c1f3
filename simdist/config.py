"""Frozen, typed configs and their JSON round-trip.

Every config in simdist is a frozen dataclass. A run writes its config as JSON beside its
checkpoints, and later stages rebuild the exact dataclass from that JSON.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from simdist import atomic
from simdist.errors import ConfigError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) config dataclass."""
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"{cfg!r} is not a dataclass")
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if len(args) != len(value):
            return tuple(value)  # wrong length: left for the caller's checks, never truncated
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(arg, value)
            except (TypeError, ValueError):
                continue
        return value
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from `to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _matches(tp: Any, value: Any) -> bool:
    """Whether `value` (already through `_convert`) is of the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], v) for v in value)
        return len(args) == len(value) and all(_matches(a, v) for a, v in zip(args, value))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # Any and other annotations: not checked here


def _checked(tp: Any, value: Any, label: str) -> Any:
    """`value` converted to the annotated type `tp` (a JSON list becomes a tuple), or a one-line
    ConfigError that starts with `label`."""
    value = _convert(tp, tuple(value) if isinstance(value, list) else value)
    if not _matches(tp, value):
        raise ConfigError(f"{label} takes {_type_name(tp)}, got {value!r}")
    return value


def replace_checked(cfg: T, overrides: dict[str, Any], what: str) -> T:
    """`cfg` with these top-level fields replaced, each converted to and checked against its
    annotated type, in one `dataclasses.replace` (so the config's own checks see all of them at
    once). Any problem is a one-line ConfigError that names `what` (e.g. "generate-data env")."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    checked = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"{what}: no field '{key}'; its fields: {', '.join(names)}")
        checked[key] = _checked(hints[key], value, f"{what}: field {key}")
    try:
        return dataclasses.replace(cfg, **checked)
    except (ValueError, TypeError) as e:  # the config's own checks (a ConfigError is a ValueError)
        raise ConfigError(f"{what}: bad setting {overrides}: {e}") from None


def with_overrides(cfg: T, overrides: dict[str, Any], _prefix: str = "") -> T:
    """Replace fields by dotted keys, e.g. {"ppo.num_iterations": 10}. Each value is converted
    to and checked against its field's annotated type; an unknown key, a wrong type or a value
    the config's own checks reject is a one-line ConfigError."""
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if not dataclasses.is_dataclass(cfg) or head not in {f.name for f in dataclasses.fields(cfg)}:
            raise ConfigError(f"unknown config key '{_prefix}{key}'")
        if rest:
            value = with_overrides(getattr(cfg, head), {rest: value}, f"{_prefix}{head}.")
        else:
            value = _checked(typing.get_type_hints(type(cfg))[head], value, f"config key '{_prefix}{key}'")
        try:
            cfg = dataclasses.replace(cfg, **{head: value})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config key '{_prefix}{key}': {e}") from None
    return cfg


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (see `simdist.atomic`)."""
    atomic.write_json(Path(path), obj)


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
