"""The Stage 2 dataset format: constants, :class:`DatasetSpec`, array specs, and the validation
of ``zarr.json`` and of appended rows.

On-disk format (schema version 2; version 1 is still read)
----------------------------------------------------------
``PATH/zarr.json``
    A zarr v3 *group* node that simdist writes itself (JSON, atomically: temp file in the same
    folder, fsync, ``os.replace``). Its ``attributes``::

        format          "simdist-dataset"
        schema_version  2 (1: written before chunk checksums)
        robot, source ("sim" | "real"), control_dt, obs_size, action_size, command_size,
        labels (bool), obs_names (list, may be empty)
        fields          name -> {"shape": [per-step shape], "dtype": "float32" | "uint8"}
        n_transitions   COMMITTED number of per-step rows (readers trust only this)
        n_episodes      COMMITTED number of episode rows
        stats_sums      float field -> {"count": int, "sum": [...], "sumsq": [...]} (float64
                        running sums over all committed rows, flattened per-step shape)
        flag_sums       uint8 flag field -> number of committed rows where it is 1
        extra           free JSON dict given at creation (generation config, expert path, ...)
        created, updated  ISO-8601 UTC timestamps

``PATH/<field>``
    One zarr v3 array per per-step field, shape ``[capacity, *per_step_shape]``, chunked along
    axis 0 only; codecs ``bytes`` -> ``blosc`` (lz4, byte-shuffle) -> ``crc32c``: every chunk
    file ends with a CRC-32C of its compressed bytes, verified on every read (schema 1 arrays
    have no ``crc32c``). ``capacity >= n_transitions``; it grows by doubling (metadata-only
    resize) when an append needs more rows. Rows past ``n_transitions`` are garbage (fill value
    or the remains of an interrupted append). Schema 2 stores every written chunk, even one
    equal to the fill value, so a chunk file missing under the committed rows is an error, never
    zeros. (Schema 1 let tensorstore skip all-zero chunks; there a missing chunk is refused only
    for obs, action, reward, value, expert_action and the episode table, where an all-zero chunk
    does not happen, and read as zeros for command and the 0/1 flags.)

``PATH/episodes``
    int64 ``[capacity, 4]``: columns (start, length, policy, terminated). ``policy`` is the
    index of the snapshot that drove the episode (as given by the data generator; -1 for the
    real robot); ``terminated`` is 1 when the episode ended by failure, 0 when it was truncated
    (time limit, end of generation). Episodes are stored contiguously in time order:
    ``start[i+1] == start[i] + length[i]`` and ``start[0] == 0``.

``PATH/write.lock``
    Advisory ``flock`` held by the (single) writer; released by the OS when the process dies.

Per-step fields (see :meth:`DatasetSpec.fields`) and their label timing -- row ``i`` of an
episode holds:

- ``obs`` float32 [obs_size]: the deployable observation o_i.
- ``action`` float32 [action_size]: the executed (noised) action a_i taken at o_i.
- ``command`` float32 [command_size]: c_i (only when command_size > 0).
- labelled (sim) data only: ``reward`` float32 [] = r(s_i, a_i); ``value`` float32 [] =
  V(s_{i+1}), the expert critic's value of the state *reached* after a_i; ``expert`` uint8 [] =
  1 when the expert policy drove the episode AND the step was clean (un-noised); ``noisy``
  uint8 [] = 1 when a_i was perturbed; optionally (``DatasetSpec.expert_action``)
  ``expert_action`` float32 [action_size] = the expert policy's own (un-noised, clipped) action
  at s_i, whichever policy drove: the relabelled behaviour-cloning target (DAgger-style). It
  has no normalisation statistics (it is normalised with those of ``action``).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from simdist.errors import DatasetError, short_reason

__all__ = [
    "EPISODE_COLUMNS",
    "FLAG_FIELDS",
    "FLOAT_FIELDS",
    "FORMAT",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "STD_FLOOR",
    "DatasetSpec",
    "array_spec",
    "default_chunk_rows",
    "open_spec",
]

FORMAT = "simdist-dataset"
#: Written by this simdist. 2: every chunk carries a crc32c checksum and is stored even when
#: it equals the fill value (so a missing chunk is an error). 1: no checksums.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
#: Standard deviations returned by :meth:`Dataset.stats` are floored at this value, so that
#: constant features (e.g. a fixed command) normalise to 0 instead of dividing by ~0.
STD_FLOOR = 1e-3
EPISODE_COLUMNS = ("start", "length", "policy", "terminated")

FLOAT_FIELDS = ("obs", "action", "command", "reward", "value")
FLAG_FIELDS = ("expert", "noisy")
SOURCES = ("sim", "real")
#: Schema 1 arrays where tensorstore may have skipped an all-zero chunk (legitimately missing).
_V1_MAY_MISS = ("command", "expert", "noisy")

TARGET_CHUNK_BYTES = 2 << 20  # ~2 MiB uncompressed per chunk
MIN_CHUNK_ROWS = 4096
MAX_CHUNK_ROWS = 1 << 18
EPISODE_CHUNK_ROWS = 8192  # 8192 x 4 x int64 = 256 KiB


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def fmt_shape(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))



@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset holds: robot, data source, and the per-step field sizes.

    ``labels=True`` (simulated data) adds ``reward``, ``value``, ``expert`` and ``noisy``;
    real-robot data has ``labels=False`` and none of them.
    """

    robot: str
    source: str  # "sim" | "real"
    control_dt: float
    obs_size: int
    action_size: int
    command_size: int = 0
    labels: bool = True
    obs_names: tuple[str, ...] = ()
    expert_action: bool = False  # labelled data only: the expert's action at every step (relabelling)

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_names", tuple(str(n) for n in self.obs_names))
        if not isinstance(self.robot, str) or not self.robot:
            raise DatasetError(f"dataset spec: robot must be a non-empty string, got {self.robot!r}")
        if self.source not in SOURCES:
            raise DatasetError(f"dataset spec: source must be 'sim' or 'real', got {self.source!r}")
        if not (isinstance(self.control_dt, (int, float)) and math.isfinite(self.control_dt) and self.control_dt > 0):
            raise DatasetError(f"dataset spec: control_dt must be a positive number, got {self.control_dt!r}")
        for name in ("obs_size", "action_size"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise DatasetError(f"dataset spec: {name} must be a positive integer, got {v!r}")
        v = self.command_size
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise DatasetError(f"dataset spec: command_size must be a non-negative integer, got {v!r}")
        for name in ("obs_size", "action_size", "command_size"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "control_dt", float(self.control_dt))
        object.__setattr__(self, "labels", bool(self.labels))
        object.__setattr__(self, "expert_action", bool(self.expert_action))
        if self.expert_action and not self.labels:
            raise DatasetError("dataset spec: expert_action labels need labels=True (simulation data)")
        if self.obs_names and len(self.obs_names) != self.obs_size:
            raise DatasetError(
                f"dataset spec: {len(self.obs_names)} obs_names given for obs_size {self.obs_size}"
            )

    def fields(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Per-step fields in storage order: name -> (per-step shape, dtype name)."""
        out: dict[str, tuple[tuple[int, ...], str]] = {
            "obs": ((self.obs_size,), "float32"),
            "action": ((self.action_size,), "float32"),
        }
        if self.command_size > 0:
            out["command"] = ((self.command_size,), "float32")
        if self.labels:
            out["reward"] = ((), "float32")
            out["value"] = ((), "float32")
            out["expert"] = ((), "uint8")
            out["noisy"] = ((), "uint8")
            if self.expert_action:
                out["expert_action"] = ((self.action_size,), "float32")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "robot": self.robot,
            "source": self.source,
            "control_dt": self.control_dt,
            "obs_size": self.obs_size,
            "action_size": self.action_size,
            "command_size": self.command_size,
            "labels": self.labels,
            "obs_names": list(self.obs_names),
            "expert_action": self.expert_action,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DatasetSpec:
        return cls(
            robot=d["robot"],
            source=d["source"],
            control_dt=d["control_dt"],
            obs_size=d["obs_size"],
            action_size=d["action_size"],
            command_size=d.get("command_size", 0),
            labels=d["labels"],
            obs_names=tuple(d.get("obs_names", ())),
            expert_action=d.get("expert_action", False),
        )

    def mismatches(self, other: DatasetSpec) -> list[str]:
        """Human-readable differences that make two specs incompatible for appending."""
        out = []
        for name in ("robot", "source", "obs_size", "action_size", "command_size", "labels", "expert_action"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name} {a!r} vs {b!r}")
        if not math.isclose(self.control_dt, other.control_dt, rel_tol=1e-9, abs_tol=0.0):
            out.append(f"control_dt {self.control_dt!r} vs {other.control_dt!r}")
        if self.obs_names and other.obs_names and self.obs_names != other.obs_names:
            out.append("obs_names differ")
        return out


def default_chunk_rows(shape: tuple[int, ...], dtype: str) -> int:
    row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1))
    rows = 1 << (rows.bit_length() - 1)  # round down to a power of two
    return int(min(max(rows, MIN_CHUNK_ROWS), MAX_CHUNK_ROWS))


def array_spec(path: Path, shape: list[int], chunk: list[int], dtype: str, *, checksum: bool = True) -> dict[str, Any]:
    """The tensorstore spec that creates one array; `checksum` appends the crc32c codec."""
    itemsize = np.dtype(dtype).itemsize
    codecs: list[dict[str, Any]] = [
        {"name": "bytes", "configuration": {"endian": "little"}},
        {
            "name": "blosc",
            "configuration": {
                "cname": "lz4",
                "clevel": 5,
                "shuffle": "shuffle" if itemsize > 1 else "noshuffle",
                "typesize": itemsize,
                "blocksize": 0,
            },
        },
    ]
    if checksum:
        codecs.append({"name": "crc32c"})
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "store_data_equal_to_fill_value": True,
        "metadata": {
            "shape": shape,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "data_type": dtype,
            "codecs": codecs,
        },
    }


def open_spec(path: Path, name: str, schema_version: int) -> dict[str, Any]:
    """The tensorstore spec that opens an existing array `name` (a field or ``episodes``).

    Every written chunk is stored (``store_data_equal_to_fill_value``), and a read of a missing
    chunk is an error instead of fill values (``fill_missing_data_reads=False``), except for the
    schema 1 arrays whose all-zero chunks tensorstore did not store.
    """
    fill_missing = schema_version == 1 and name in _V1_MAY_MISS
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path / name)},
        "store_data_equal_to_fill_value": True,
        "fill_missing_data_reads": fill_missing,
    }


def read_group(path: Path) -> dict[str, Any]:
    """Read and minimally validate PATH/zarr.json; returns its attributes."""
    if not path.exists():
        raise DatasetError(f"{path}: no dataset here (path does not exist)")
    if not path.is_dir():
        raise DatasetError(f"{path}: not a simdist dataset (not a directory)")
    meta = path / "zarr.json"
    if not meta.is_file():
        raise DatasetError(f"{path}: not a simdist dataset (no zarr.json)")
    try:
        doc = json.loads(meta.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt metadata (zarr.json: {short_reason(e)})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise DatasetError(f"{path}: not a simdist dataset (zarr.json is not a zarr v3 group)")
    attrs = doc.get("attributes")
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a simdist dataset (zarr.json lacks format '{FORMAT}')")
    version = attrs.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
        raise DatasetError(
            f"{path}: unsupported dataset schema version {version!r} (this simdist reads versions"
            f" {', '.join(str(v) for v in READABLE_SCHEMA_VERSIONS)})"
        )
    return attrs


def group_doc(attrs: dict[str, Any]) -> dict[str, Any]:
    """The zarr.json document of a dataset group with these attributes."""
    return {"zarr_format": 3, "node_type": "group", "attributes": attrs}


def new_attrs(spec: DatasetSpec, extra: dict[str, Any]) -> dict[str, Any]:
    """The group attributes of a new, empty dataset."""
    fields = spec.fields()
    stamp = now()
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        **spec.to_json(),
        "fields": {k: {"shape": list(s), "dtype": d} for k, (s, d) in fields.items()},
        "n_transitions": 0,
        "n_episodes": 0,
        "stats_sums": {
            k: {"count": 0, "sum": [0.0] * int(np.prod(s, dtype=np.int64)),
                "sumsq": [0.0] * int(np.prod(s, dtype=np.int64))}
            for k, (s, d) in fields.items() if k in FLOAT_FIELDS
        },
        "flag_sums": {k: 0 for k in fields if k in FLAG_FIELDS},
        "extra": extra,
        "created": stamp,
        "updated": stamp,
    }


def check_attrs(path: Path, attrs: dict[str, Any]) -> DatasetSpec:
    """Validate the attributes read by :func:`read_group`; returns the dataset's spec."""
    try:
        spec = DatasetSpec.from_json(attrs)
        n_transitions = attrs["n_transitions"]
        n_episodes = attrs["n_episodes"]
        stored_fields = attrs["fields"]
        stats_sums = attrs["stats_sums"]
        flag_sums = attrs["flag_sums"]
        if not isinstance(attrs.get("extra", {}), dict):
            raise ValueError("'extra' is not a dict")
    except DatasetError as e:
        raise DatasetError(f"{path}: corrupt metadata ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt metadata (zarr.json attributes: {short_reason(e)})") from None
    for name, v in (("n_transitions", n_transitions), ("n_episodes", n_episodes)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise DatasetError(f"{path}: corrupt metadata ({name} = {v!r})")
    fields = spec.fields()
    expected_fields = {k: {"shape": list(s), "dtype": d} for k, (s, d) in fields.items()}
    if stored_fields != expected_fields:
        raise DatasetError(f"{path}: corrupt metadata (field table {stored_fields!r} does not match the spec)")
    if not isinstance(stats_sums, dict) or not isinstance(flag_sums, dict):
        raise DatasetError(f"{path}: corrupt metadata (stats_sums / flag_sums)")
    for k, (s, _) in fields.items():
        if k in FLOAT_FIELDS:
            st = stats_sums.get(k)
            size = int(np.prod(s, dtype=np.int64))
            if (not isinstance(st, dict) or len(st.get("sum", ())) != size
                    or len(st.get("sumsq", ())) != size or not isinstance(st.get("count"), int)):
                raise DatasetError(f"{path}: corrupt metadata (statistics of field '{k}')")
    return spec


def check_append(p: Path, spec: DatasetSpec, steps: Any, lengths: Any, policy: Any, terminated: Any
                 ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Validate the arguments of :meth:`Dataset.append_episodes`; returns the per-step arrays
    converted to their stored dtypes, and lengths, policy and terminated as arrays."""
    fields = spec.fields()
    lengths = np.asarray(lengths)
    policy = np.asarray(policy)
    terminated = np.asarray(terminated)
    if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
        raise DatasetError(f"{p}: lengths must be a 1-D integer array, got shape {lengths.shape} {lengths.dtype}")
    n_new = lengths.shape[0]
    if np.any(lengths < 1):
        raise DatasetError(f"{p}: every episode length must be >= 1, got {int(lengths.min())}")
    if policy.shape != (n_new,) or (n_new and not np.issubdtype(policy.dtype, np.integer)):
        raise DatasetError(f"{p}: policy must be an integer array of shape ({n_new},), got {policy.shape} {policy.dtype}")
    if terminated.shape != (n_new,) or not np.all((terminated == 0) | (terminated == 1)):
        raise DatasetError(f"{p}: terminated must be a 0/1 array of shape ({n_new},)")
    if not isinstance(steps, dict):
        raise DatasetError(f"{p}: steps must be a dict of field name -> array")
    missing = [k for k in fields if k not in steps]
    if missing:
        raise DatasetError(f"{p}: append is missing field(s) {', '.join(repr(k) for k in missing)}")
    unknown = [k for k in steps if k not in fields]
    if unknown:
        raise DatasetError(
            f"{p}: append has unknown field(s) {', '.join(repr(k) for k in unknown)}"
            f" (dataset fields: {', '.join(fields)})"
        )
    n_rows = int(lengths.sum()) if n_new else 0
    arrays: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in fields.items():
        a = np.asarray(steps[name])
        if a.shape != (n_rows, *shape):
            raise DatasetError(
                f"{p}: field '{name}' of the append has shape {fmt_shape(a.shape)},"
                f" expected {fmt_shape((n_rows, *shape))} (sum of lengths = {n_rows})"
            )
        if dtype == "float32":
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise DatasetError(f"{p}: field '{name}' must be numeric, got dtype {a.dtype}")
            a = np.ascontiguousarray(a, dtype=np.float32)
            finite = np.isfinite(a)
            if not finite.all():
                bad = int(np.argwhere(~finite)[0][0])
                raise DatasetError(
                    f"{p}: field '{name}' of the append has non-finite values (NaN/inf), first at row {bad}"
                )
        else:
            if not (a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer)) or not np.all((a == 0) | (a == 1)):
                raise DatasetError(f"{p}: field '{name}' of the append must be 0/1 (or bool)")
            a = np.ascontiguousarray(a, dtype=np.uint8)
        arrays[name] = a
    return arrays, lengths, policy, terminated


def appended_attrs(p: Path, attrs: dict[str, Any], arrays: dict[str, np.ndarray], lengths: np.ndarray,
                   policy: np.ndarray, terminated: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """The group attributes after appending these episodes, and their episode-table rows."""
    n_rows, n_new = int(lengths.sum()), int(lengths.shape[0])
    n0, e0 = int(attrs["n_transitions"]), int(attrs["n_episodes"])
    # New running sums (float64) -- computed before touching the disk.
    attrs = copy.deepcopy(attrs)
    for name, a in arrays.items():
        if name in FLOAT_FIELDS:
            flat = a.reshape(n_rows, -1).astype(np.float64)
            st = attrs["stats_sums"][name]
            st["count"] = int(st["count"]) + n_rows
            st["sum"] = (np.asarray(st["sum"], np.float64) + flat.sum(axis=0)).tolist()
            st["sumsq"] = (np.asarray(st["sumsq"], np.float64) + np.square(flat).sum(axis=0)).tolist()
            if not (np.all(np.isfinite(st["sum"])) and np.all(np.isfinite(st["sumsq"]))):
                raise DatasetError(f"{p}: field '{name}' values are too large (statistics overflow)")
        elif name in FLAG_FIELDS:
            attrs["flag_sums"][name] = int(attrs["flag_sums"].get(name, 0)) + int(a.sum(dtype=np.int64))
    starts = n0 + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    table = np.stack(
        [starts, lengths.astype(np.int64), policy.astype(np.int64), terminated.astype(np.int64)], axis=1
    )
    attrs["n_transitions"] = n0 + n_rows
    attrs["n_episodes"] = e0 + n_new
    attrs["updated"] = now()
    return attrs, table
