"""Stage 2 dataset storage: episodes of per-step arrays in a zarr v3 group, written with tensorstore.

On-disk format (schema version 1)
---------------------------------
``PATH/zarr.json``
    A zarr v3 *group* node that simdist writes itself (JSON, atomically: temp file in the same
    folder, fsync, ``os.replace``). Its ``attributes``::

        format          "simdist-dataset"
        schema_version  1
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
    axis 0 only, blosc(lz4, byte-shuffle) compressed. ``capacity >= n_transitions``; it grows by
    doubling (metadata-only resize) when an append needs more rows. Rows past ``n_transitions``
    are garbage (fill value or the remains of an interrupted append).

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

Crash safety: :meth:`Dataset.append_episodes` writes the per-step rows past the committed
count (resizing first if needed) and the episode rows, waits for every write, and only then
replaces ``zarr.json`` with the new counts and statistics sums. A process killed at any point
leaves a dataset that opens and holds only whole episodes. :meth:`Dataset.create` builds the
empty dataset in a sibling ``PATH.tmp-<pid>-<random>`` folder and renames it into place.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import glob
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from simdist.errors import DatasetError

__all__ = [
    "EPISODE_COLUMNS",
    "FORMAT",
    "SCHEMA_VERSION",
    "STD_FLOOR",
    "Dataset",
    "DatasetSpec",
    "format_info",
]

FORMAT = "simdist-dataset"
SCHEMA_VERSION = 1
#: Standard deviations returned by :meth:`Dataset.stats` are floored at this value, so that
#: constant features (e.g. a fixed command) normalise to 0 instead of dividing by ~0.
STD_FLOOR = 1e-3
EPISODE_COLUMNS = ("start", "length", "policy", "terminated")

FLOAT_FIELDS = ("obs", "action", "command", "reward", "value")
FLAG_FIELDS = ("expert", "noisy")
SOURCES = ("sim", "real")

_TARGET_CHUNK_BYTES = 2 << 20  # ~2 MiB uncompressed per chunk
_MIN_CHUNK_ROWS = 4096
_MAX_CHUNK_ROWS = 1 << 18
_EPISODE_CHUNK_ROWS = 8192  # 8192 x 4 x int64 = 256 KiB
_READ_PIECE_BYTES = 64 << 20  # at most this much is read in one tensorstore request
_LOCK_NAME = "write.lock"


def _short(e: BaseException, limit: int = 200) -> str:
    """One line of an exception, for embedding in a one-line DatasetError message."""
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------


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


def _default_chunk_rows(shape: tuple[int, ...], dtype: str) -> int:
    row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = max(1, _TARGET_CHUNK_BYTES // max(row_bytes, 1))
    rows = 1 << (rows.bit_length() - 1)  # round down to a power of two
    return int(min(max(rows, _MIN_CHUNK_ROWS), _MAX_CHUNK_ROWS))


def _array_spec(path: Path, shape: list[int], chunk: list[int], dtype: str) -> dict[str, Any]:
    itemsize = np.dtype(dtype).itemsize
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": shape,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
            "data_type": dtype,
            "codecs": [
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
            ],
        },
    }


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` so that readers see either the old or the new complete file."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    data = json.dumps(obj, indent=1, allow_nan=False).encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return True
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def _remove_stale_tmp_dirs(path: Path) -> None:
    """Remove `PATH.tmp-<pid>-*` leftovers of a `create` whose process is gone."""
    with contextlib.suppress(OSError):
        for p in path.parent.glob(f"{glob.escape(path.name)}.tmp-*"):
            parts = p.name[len(path.name) + len(".tmp-") :].split("-")
            try:
                pid = int(parts[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _remove_stale_write_files(path: Path, arrays: list[str]) -> None:
    """Delete what killed writers leave behind. Only call while holding the dataset write lock.

    - ``zarr.json.tmp-*``: our own commit temp files (a kill before ``os.replace``).
    - ``*.__lock`` inside the arrays: tensorstore's file kvstore writes each chunk (and array
      metadata) into ``<key>.__lock`` and renames it over ``<key>``. A SIGKILL mid-write leaves
      that file behind, and tensorstore 0.1.86 reuses it WITHOUT truncating, so the next, shorter
      write of the same key would carry the old tail and the chunk would no longer decode.
      Holding our write lock, no other writer exists, so every such file is stale.
    """
    for p in path.glob("zarr.json.tmp-*"):
        with contextlib.suppress(OSError):
            p.unlink()
    for name in arrays:
        for root, _, files in os.walk(path / name):
            for f in files:
                if f.endswith(".__lock"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(root, f))


def _read_group(path: Path) -> dict[str, Any]:
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
        raise DatasetError(f"{path}: corrupt metadata (zarr.json: {_short(e)})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise DatasetError(f"{path}: not a simdist dataset (zarr.json is not a zarr v3 group)")
    attrs = doc.get("attributes")
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a simdist dataset (zarr.json lacks format '{FORMAT}')")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: unsupported dataset schema version {version!r} (this simdist reads version {SCHEMA_VERSION})"
        )
    return attrs


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class Dataset:
    """A Stage 2 dataset on disk. Build with :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    One process at a time may hold a dataset open for writing (an advisory lock in
    ``PATH/write.lock``); any number may read. A reader sees the committed state as of its
    ``open`` (or last :meth:`reload`).
    """

    def __init__(self, path: Path, attrs: dict[str, Any], spec: DatasetSpec, stores: dict[str, Any],
                 episode_store: Any, writable: bool, lock_fd: int | None):
        # Private: use create / open / open_or_create.
        self.path = path
        self.spec = spec
        self._attrs = attrs
        self._stores = stores
        self._episode_store = episode_store
        self._writable = writable
        self._lock_fd = lock_fd
        self._episodes: np.ndarray | None = None

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, spec: DatasetSpec, *, extra: dict | None = None,
               chunk_steps: int | None = None) -> Dataset:
        """Create an empty dataset at PATH (which must not exist) and open it for writing.

        `chunk_steps` sets the rows per chunk of every per-step array; by default each field
        gets a power of two giving ~2 MiB uncompressed chunks (4096..262144 rows).
        """
        path = Path(path)
        if not isinstance(spec, DatasetSpec):
            raise DatasetError(f"{path}: spec must be a DatasetSpec, got {type(spec).__name__}")
        if path.exists() or path.is_symlink():
            raise DatasetError(f"{path}: already exists; choose a new path or open/resume it")
        extra = dict(extra or {})
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path}: extra attributes are not JSON-serialisable ({_short(e)})") from None
        if chunk_steps is not None and (int(chunk_steps) != chunk_steps or chunk_steps < 1):
            raise DatasetError(f"{path}: chunk_steps must be a positive integer, got {chunk_steps!r}")

        fields = spec.fields()
        now = _now()
        attrs: dict[str, Any] = {
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
            "created": now,
            "updated": now,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(f"{path}: cannot create parent folder ({_short(e)})") from None
        _remove_stale_tmp_dirs(path)
        tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            base = tmp.absolute()
            futures = []
            for name, (shape, dtype) in fields.items():
                rows = int(chunk_steps) if chunk_steps else _default_chunk_rows(shape, dtype)
                spec_json = _array_spec(base / name, [rows, *shape], [rows, *shape], dtype)
                futures.append(ts.open(spec_json, create=True))
            erows = min(_EPISODE_CHUNK_ROWS, int(chunk_steps)) if chunk_steps else _EPISODE_CHUNK_ROWS
            futures.append(ts.open(_array_spec(base / "episodes", [erows, 4], [erows, 4], "int64"), create=True))
            for f in futures:
                f.result()
            _write_json_atomic(tmp / "zarr.json", {"zarr_format": 3, "node_type": "group", "attributes": attrs})
            if path.exists() or path.is_symlink():
                raise DatasetError(f"{path}: already exists; choose a new path or open/resume it")
            os.rename(tmp, path)
        except DatasetError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.exists():
                raise DatasetError(f"{path}: already exists; choose a new path or open/resume it") from None
            raise DatasetError(f"{path}: cannot create dataset ({_short(e)})") from None
        return cls.open(path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False, robot: str | None = None,
             obs_size: int | None = None, action_size: int | None = None, command_size: int | None = None,
             require_labels: bool = False) -> Dataset:
        """Open and validate a dataset; the keyword expectations raise DatasetError on mismatch."""
        path = Path(path)
        attrs = _read_group(path)
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
            raise DatasetError(f"{path}: corrupt metadata (zarr.json attributes: {_short(e)})") from None
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

        # Caller expectations (most useful message first).
        if robot is not None and spec.robot != robot:
            raise DatasetError(f"{path}: dataset is for robot '{spec.robot}', not '{robot}'")
        for fname, attr, want in (("obs", "obs_size", obs_size), ("action", "action_size", action_size)):
            if want is not None and getattr(spec, attr) != want:
                raise DatasetError(
                    f"{path}: field '{fname}' has per-step shape ({getattr(spec, attr)},), expected ({want},)"
                    f" ({attr}={want})"
                )
        if command_size is not None and spec.command_size != command_size:
            raise DatasetError(f"{path}: dataset has command_size {spec.command_size}, expected {command_size}")
        if require_labels and not spec.labels:
            raise DatasetError(
                f"{path}: dataset has no reward/value/expert labels (source '{spec.source}');"
                " this step needs labelled simulation data"
            )

        lock_fd = cls._lock(path) if writable else None
        try:
            stores, episode_store = cls._open_arrays(path, fields, writable)
            for name, store in stores.items():
                if store.shape[0] < n_transitions:
                    raise DatasetError(
                        f"{path}: corrupt dataset (committed n_transitions={n_transitions} exceeds the"
                        f" {store.shape[0]} rows of field '{name}')"
                    )
            if episode_store.shape[0] < n_episodes:
                raise DatasetError(
                    f"{path}: corrupt dataset (committed n_episodes={n_episodes} exceeds the"
                    f" {episode_store.shape[0]} rows of 'episodes')"
                )
            if n_episodes == 0 and n_transitions != 0:
                raise DatasetError(f"{path}: corrupt dataset ({n_transitions} transitions but no episodes)")
            if n_episodes > 0:
                try:
                    last = episode_store[n_episodes - 1].read().result()
                except Exception as e:
                    raise DatasetError(f"{path}: corrupt dataset (episode table unreadable: {_short(e)})") from None
                if int(last[0]) + int(last[1]) != n_transitions:
                    raise DatasetError(
                        f"{path}: corrupt dataset (last episode ends at {int(last[0]) + int(last[1])},"
                        f" but n_transitions={n_transitions})"
                    )
            if writable:
                _remove_stale_write_files(path, [*fields, "episodes"])
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        return cls(path, attrs, spec, stores, episode_store, writable, lock_fd)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, spec: DatasetSpec, *, extra: dict | None = None,
                       chunk_steps: int | None = None) -> Dataset:
        """Resume: open PATH for writing if it exists and matches `spec`, else create it.

        An existing dataset keeps its own `extra` attributes (compare ``ds.attrs["extra"]`` to
        decide whether a resume is legitimate; use :meth:`update_extra` to record more).
        """
        path = Path(path)
        if path.exists() or path.is_symlink():
            ds = cls.open(path, writable=True)
            diffs = ds.spec.mismatches(spec)
            if diffs:
                ds.close()
                raise DatasetError(f"{path}: existing dataset does not match the requested one ({'; '.join(diffs)})")
            return ds
        return cls.create(path, spec, extra=extra, chunk_steps=chunk_steps)

    @staticmethod
    def _lock(path: Path) -> int:
        try:
            fd = os.open(path / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DatasetError(f"{path}: cannot open for writing ({_short(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DatasetError(f"{path}: another process (or Dataset object) has it open for writing") from None
        return fd

    @staticmethod
    def _open_arrays(path: Path, fields: dict[str, tuple[tuple[int, ...], str]], writable: bool):
        base = path.absolute()
        futures = {}
        for name in [*fields, "episodes"]:
            spec_json = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(base / name)}}
            futures[name] = ts.open(spec_json, open=True, read=True, write=writable)
        stores = {}
        for name, fut in futures.items():
            try:
                stores[name] = fut.result()
            except Exception as e:
                if not (base / name / "zarr.json").exists():
                    what = "the episode table" if name == "episodes" else f"field '{name}'"
                    raise DatasetError(f"{path}: missing {what} (no array at {name}/)") from None
                raise DatasetError(f"{path}: field '{name}' is unreadable ({_short(e)})") from None
        expected = dict(fields)
        expected["episodes"] = ((4,), "int64")
        for name, (shape, dtype) in expected.items():
            store = stores[name]
            actual_shape = tuple(int(s) for s in store.shape[1:])
            if store.rank < 1 or actual_shape != tuple(shape):
                raise DatasetError(
                    f"{path}: field '{name}' has per-step shape {_fmt_shape(actual_shape)},"
                    f" expected {_fmt_shape(shape)}"
                )
            if np.dtype(store.dtype.numpy_dtype) != np.dtype(dtype):
                raise DatasetError(
                    f"{path}: field '{name}' has dtype {store.dtype.name}, expected {dtype}"
                )
        episode_store = stores.pop("episodes")
        return stores, episode_store

    # ---- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the write lock (if any). Reading still works afterwards; writing does not."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
        self._writable = False

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        # No `contextlib` here: at interpreter exit module globals may already be None.
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"Dataset({str(self.path)!r}, robot={self.spec.robot!r}, source={self.spec.source!r},"
                f" n_transitions={self.n_transitions}, n_episodes={self.n_episodes})")

    def reload(self) -> None:
        """Re-read the committed state (counts, statistics) written by another process.

        A no-op for the writer itself, whose view is always current.
        """
        if self._writable:
            return
        fresh = type(self).open(self.path, writable=False)
        self._attrs, self._stores, self._episode_store = fresh._attrs, fresh._stores, fresh._episode_store
        self._episodes = None

    # ---- properties --------------------------------------------------------------------------

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the group attributes; the creation-time `extra` dict is ``attrs["extra"]``."""
        return copy.deepcopy(self._attrs)

    @property
    def extra(self) -> dict[str, Any]:
        return copy.deepcopy(self._attrs.get("extra", {}))

    @property
    def n_transitions(self) -> int:
        return int(self._attrs["n_transitions"])

    @property
    def n_episodes(self) -> int:
        return int(self._attrs["n_episodes"])

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self._stores)

    def chunk_rows(self, field: str) -> int:
        """Rows per stored chunk of a per-step field (the unit of disk I/O)."""
        self._check_field(field)
        return int(self._stores[field].chunk_layout.read_chunk.shape[0])

    # ---- writing -----------------------------------------------------------------------------

    def append_episodes(self, steps: dict[str, np.ndarray], lengths: np.ndarray, policy: np.ndarray,
                        terminated: np.ndarray) -> None:
        """Append whole episodes and commit them atomically.

        `steps[field]` holds the episodes' rows concatenated in order, shape
        ``[sum(lengths), *per_step_shape]``, for exactly the fields of the spec. `lengths`,
        `policy` and `terminated` are ``[n_new_episodes]``. Float fields must be finite; flag
        fields (`expert`, `noisy`) and `terminated` must be 0/1 (or bool).
        """
        p = self.path
        if not self._writable:
            raise DatasetError(f"{p}: dataset is open read-only; open it with writable=True to append")
        fields = self.spec.fields()
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
                    f"{p}: field '{name}' of the append has shape {_fmt_shape(a.shape)},"
                    f" expected {_fmt_shape((n_rows, *shape))} (sum of lengths = {n_rows})"
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
        if n_new == 0:
            return

        n0, e0 = self.n_transitions, self.n_episodes
        # New running sums (float64) -- computed before touching the disk.
        attrs = copy.deepcopy(self._attrs)
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
        attrs["updated"] = _now()

        try:
            self._ensure_capacity(n0 + n_rows, e0 + n_new)
            writes = [self._stores[name][n0 : n0 + n_rows].write(a) for name, a in arrays.items()]
            writes.append(self._episode_store[e0 : e0 + n_new].write(table))
            for w in writes:
                w.result()
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{p}: writing {n_new} episodes failed ({_short(e)})") from None
        # Only now do readers get to see the new rows.
        self._commit(attrs)
        self._attrs = attrs
        if self._episodes is not None:
            self._episodes = np.concatenate([self._episodes, table])

    def update_extra(self, updates: dict[str, Any]) -> None:
        """Merge `updates` into the `extra` attributes and commit (atomically)."""
        if not self._writable:
            raise DatasetError(f"{self.path}: dataset is open read-only; open it with writable=True")
        attrs = copy.deepcopy(self._attrs)
        attrs.setdefault("extra", {}).update(updates)
        try:
            json.dumps(attrs, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{self.path}: extra attributes are not JSON-serialisable ({_short(e)})") from None
        attrs["updated"] = _now()
        self._commit(attrs)
        self._attrs = attrs

    def _ensure_capacity(self, rows: int, episodes: int) -> None:
        futures = {}
        for name, store in self._stores.items():
            cap = int(store.shape[0])
            if cap < rows:
                chunk = int(store.chunk_layout.read_chunk.shape[0])
                new = max(rows, 2 * cap)
                new = -(-new // chunk) * chunk
                futures[name] = store.resize(exclusive_max=[new, *store.shape[1:]],
                                             resize_metadata_only=True, expand_only=True)
        cap = int(self._episode_store.shape[0])
        if cap < episodes:
            chunk = int(self._episode_store.chunk_layout.read_chunk.shape[0])
            new = -(-max(episodes, 2 * cap) // chunk) * chunk
            futures["episodes"] = self._episode_store.resize(exclusive_max=[new, 4],
                                                             resize_metadata_only=True, expand_only=True)
        for name, fut in futures.items():
            store = fut.result()
            if name == "episodes":
                self._episode_store = store
            else:
                self._stores[name] = store

    def _commit(self, attrs: dict[str, Any]) -> None:
        """Atomically replace zarr.json: the single commit point of every write."""
        try:
            _write_json_atomic(self.path / "zarr.json",
                               {"zarr_format": 3, "node_type": "group", "attributes": attrs})
        except OSError as e:
            raise DatasetError(f"{self.path}: cannot commit metadata ({_short(e)})") from None

    # ---- reading -----------------------------------------------------------------------------

    def _check_field(self, field: str) -> None:
        if field not in self._stores:
            raise DatasetError(f"{self.path}: no field '{field}' (fields: {', '.join(self._stores)})")

    def episodes(self) -> np.ndarray:
        """[n_episodes, 4] int64 table with columns (start, length, policy, terminated)."""
        if self._episodes is None:
            n = self.n_episodes
            if n == 0:
                self._episodes = np.zeros((0, 4), np.int64)
            else:
                try:
                    self._episodes = np.asarray(self._episode_store[0:n].read().result(), np.int64)
                except Exception as e:
                    raise DatasetError(f"{self.path}: episode table unreadable ({_short(e)})") from None
        return self._episodes.copy()

    def read(self, field: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows [start, stop) of a per-step field (slice semantics, clamped)."""
        self._check_field(field)
        start, stop, _ = slice(start, stop).indices(self.n_transitions)
        shape, dtype = self.spec.fields()[field]
        if stop <= start:
            return np.zeros((0, *shape), dtype)
        try:
            return np.asarray(self._stores[field][start:stop].read().result())
        except Exception as e:
            raise DatasetError(f"{self.path}: reading field '{field}' failed ({_short(e)})") from None

    def read_ranges(self, field: str, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """Rows of several committed ranges [starts[k], stops[k]) concatenated in order.

        Ranges are merged into large reads when they are close on disk (gap below one chunk),
        so reading many neighbouring episodes costs about one read per contiguous run.
        """
        self._check_field(field)
        starts = np.asarray(starts, np.int64).reshape(-1)
        stops = np.asarray(stops, np.int64).reshape(-1)
        n = self.n_transitions
        if starts.shape != stops.shape or np.any(starts < 0) or np.any(stops > n) or np.any(stops < starts):
            raise DatasetError(f"{self.path}: invalid row ranges for field '{field}' (committed rows: {n})")
        shape, dtype = self.spec.fields()[field]
        lens = stops - starts
        out = np.empty((int(lens.sum()), *shape), dtype)
        if out.shape[0] == 0:
            return out
        store = self._stores[field]
        chunk = int(store.chunk_layout.read_chunk.shape[0])
        row_bytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        piece = max(chunk, _READ_PIECE_BYTES // row_bytes)
        out_off = np.concatenate([[0], np.cumsum(lens)[:-1]])

        # Plan spans: (span_start, span_stop, [(range_start, range_stop, out_offset), ...]).
        spans: list[tuple[int, int, list[tuple[int, int, int]]]] = []
        for a, b, o in zip(starts.tolist(), stops.tolist(), out_off.tolist()):
            if a == b:
                continue
            while b - a > piece:  # split very long ranges
                spans.append((a, a + piece, [(a, a + piece, o)]))
                o += piece
                a += piece
            if spans:
                s0, s1, members = spans[-1]
                if s1 <= a and a - s1 <= chunk and b - s0 <= piece:
                    spans[-1] = (s0, b, [*members, (a, b, o)])
                    continue
            spans.append((a, b, [(a, b, o)]))

        def finish(batch: list[tuple[Any, int, list[tuple[int, int, int]]]]) -> None:
            for fut, s0, members in batch:
                data = fut.result()
                for a, b, o in members:
                    out[o : o + (b - a)] = data[a - s0 : b - s0]

        try:
            pending: list[tuple[Any, int, list[tuple[int, int, int]]]] = []
            pending_rows = 0
            for s0, s1, members in spans:
                pending.append((store[s0:s1].read(), s0, members))
                pending_rows += s1 - s0
                if pending_rows >= 4 * piece:
                    finish(pending)
                    pending, pending_rows = [], 0
            finish(pending)
        except Exception as e:
            raise DatasetError(f"{self.path}: reading field '{field}' failed ({_short(e)})") from None
        return out

    def read_episode(self, i: int) -> dict[str, np.ndarray]:
        """All per-step fields of episode `i` (negative indices count from the end).

        Episode metadata (start, length, policy, terminated) is ``episodes()[i]``.
        """
        n = self.n_episodes
        if not -n <= i < n:
            raise DatasetError(f"{self.path}: episode {i} out of range (dataset has {n} episodes)")
        start, length = (int(v) for v in self.episodes()[i, :2])
        try:
            futs = {k: s[start : start + length].read() for k, s in self._stores.items()}
            return {k: np.asarray(f.result()) for k, f in futs.items()}
        except Exception as e:
            raise DatasetError(f"{self.path}: reading episode {i} failed ({_short(e)})") from None

    def stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per float field (obs, action, command, reward, value): (mean, std), float32.

        Computed from the float64 running sums over ALL committed rows: std is the population
        standard deviation, floored at :data:`STD_FLOOR` (1e-3) so constant features do not
        blow up when normalised. These statistics are meant to be computed once from sim data
        and reused for every later model (including on real data).
        """
        out = {}
        for name, st in self._attrs["stats_sums"].items():
            count = int(st["count"])
            if count == 0:
                raise DatasetError(f"{self.path}: dataset is empty; normalisation statistics are undefined")
            shape = self.spec.fields()[name][0]
            s = np.asarray(st["sum"], np.float64)
            ss = np.asarray(st["sumsq"], np.float64)
            mean = s / count
            var = np.maximum(ss / count - mean * mean, 0.0)
            std = np.maximum(np.sqrt(var), STD_FLOOR)
            out[name] = (mean.astype(np.float32).reshape(shape), std.astype(np.float32).reshape(shape))
        return out

    def size_on_disk(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, f)).st_size
        return total

    def info(self) -> dict[str, Any]:
        """Everything ``simdist data info PATH`` prints (JSON-serialisable)."""
        spec = self.spec
        n, e = self.n_transitions, self.n_episodes
        eps = self.episodes()
        lengths = eps[:, 1]
        policies: dict[int, dict[str, int]] = {}
        for pol in np.unique(eps[:, 2]).tolist():
            sel = eps[:, 2] == pol
            policies[int(pol)] = {"episodes": int(sel.sum()), "transitions": int(lengths[sel].sum())}
        flag = self._attrs.get("flag_sums", {})
        stats = {}
        if n > 0:
            stats = {k: {"mean": np.atleast_1d(m).tolist(), "std": np.atleast_1d(s).tolist()}
                     for k, (m, s) in self.stats().items()}
        return {
            "path": str(self.path),
            "robot": spec.robot,
            "source": spec.source,
            "schema_version": int(self._attrs["schema_version"]),
            "control_dt": spec.control_dt,
            "labels": spec.labels,
            "n_transitions": n,
            "n_episodes": e,
            "duration_s": n * spec.control_dt,
            "size_bytes": self.size_on_disk(),
            "episode_length": (
                {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())} if e else None
            ),
            "fields": {k: {"shape": list(s), "dtype": d} for k, (s, d) in spec.fields().items()},
            "obs_names": list(spec.obs_names),
            "policy_counts": policies,
            "expert_share": (flag.get("expert", 0) / n) if (spec.labels and n) else None,
            "noisy_share": (flag.get("noisy", 0) / n) if (spec.labels and n) else None,
            "terminated_share": float(eps[:, 3].mean()) if e else None,
            "stats": stats,
            "extra": self.extra,
            "created": self._attrs.get("created"),
            "updated": self._attrs.get("updated"),
        }


# --------------------------------------------------------------------------------------------
# Text rendering
# --------------------------------------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _fmt_duration(s: float) -> str:
    s = float(s)
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m:02d}m {sec:02d}s"
    if m:
        return f"{m}m {sec:02d}s"
    return f"{s:.2f} s"


def _fmt_vec(v: list[float]) -> str:
    x = np.round(np.asarray(v, np.float64), 3) + 0.0  # + 0.0 turns -0.0 into 0.0
    return np.array2string(x, precision=3, threshold=8, edgeitems=3,
                           max_line_width=10**6, suppress_small=True, separator=", ")


def format_info(info: dict[str, Any]) -> str:
    """The human-readable multi-line text for ``simdist data info`` (from :meth:`Dataset.info`)."""
    lines = [f"dataset        {info['path']}"]
    lines.append(f"robot          {info['robot']} ({info['source']} data, schema v{info['schema_version']})")
    lines.append(f"control dt     {info['control_dt']:g} s")
    lines.append(f"transitions    {info['n_transitions']:,} ({_fmt_duration(info['duration_s'])} of robot time)")
    el = info.get("episode_length")
    ep_line = f"episodes       {info['n_episodes']:,}"
    if el:
        ep_line += f" (length min {el['min']} / mean {el['mean']:.1f} / max {el['max']})"
    lines.append(ep_line)
    if info.get("terminated_share") is not None:
        lines.append(f"terminated     {100 * info['terminated_share']:.1f}% of episodes (rest truncated)")
    if info.get("labels"):
        if info.get("expert_share") is not None:
            lines.append(f"expert steps   {100 * info['expert_share']:.1f}%  (expert policy, clean action)")
            lines.append(f"noisy steps    {100 * info['noisy_share']:.1f}%  (perturbed action)")
    else:
        lines.append("labels         none (no reward/value/expert/noisy fields)")
    lines.append(f"size on disk   {_fmt_bytes(info['size_bytes'])}")
    pol = info.get("policy_counts") or {}
    if pol:
        lines.append("policies       " + ", ".join(
            f"{'real robot' if int(k) < 0 else f'#{k}'}: {v['episodes']:,} ep / {v['transitions']:,} steps"
            for k, v in sorted(pol.items(), key=lambda kv: int(kv[0]))
        ))
    lines.append("fields")
    stats = info.get("stats") or {}
    width = max(len(k) for k in info["fields"]) if info["fields"] else 0
    for name, f in info["fields"].items():
        shape = "x".join(str(s) for s in f["shape"]) or "scalar"
        line = f"  {name:<{width}}  {f['dtype']:<7}  {shape:<6}"
        if name in stats:
            line += f"  mean {_fmt_vec(stats[name]['mean'])}  std {_fmt_vec(stats[name]['std'])}"
        lines.append(line.rstrip())
    if info.get("obs_names"):
        names = info["obs_names"]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} total)" if len(names) > 12 else "")
        lines.append(f"obs names      {shown}")
    extra = info.get("extra") or {}
    if extra:
        lines.append("extra")
        for k, v in extra.items():
            text = json.dumps(v, sort_keys=True, default=str)
            if len(text) > 100:
                text = text[:97] + "..."
            lines.append(f"  {k}: {text}")
    if info.get("created"):
        lines.append(f"created        {info['created']} (updated {info.get('updated')})")
    return "\n".join(lines)
