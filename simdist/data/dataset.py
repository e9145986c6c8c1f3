"""Stage 2 dataset storage: episodes of per-step arrays in a zarr v3 group, written with tensorstore.

The on-disk format (group attributes, arrays, chunk checksums, schema versions) is described
in :mod:`simdist.data.schema`; the lock and stale-file cleanup live in :mod:`simdist.data.fs`,
the read planner and chunk-error messages in :mod:`simdist.data.reads`, and the ``data info``
text in :mod:`simdist.data.info`. This module holds :class:`Dataset`, the reader and writer.

Crash safety: :meth:`Dataset.append_episodes` writes the per-step rows past the committed
count (resizing first if needed) and the episode rows, waits for every write, and only then
replaces ``zarr.json`` with the new counts and statistics sums. A process killed at any point
leaves a dataset that opens and holds only whole episodes. :meth:`Dataset.create` builds the
empty dataset in a sibling ``PATH.tmp-<pid>-<random>`` folder and renames it into place.

Integrity: every read (:meth:`Dataset.read`, :meth:`Dataset.read_ranges`,
:meth:`Dataset.read_episode`, :meth:`Dataset.episodes`) verifies the crc32c checksum of each
chunk it touches and refuses a missing chunk; :meth:`Dataset.verify` reads every committed
chunk once. A damaged dataset is a one-line :class:`DatasetError` naming the chunk file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from simdist.atomic import write_json
from simdist.data.fs import acquire_write_lock, remove_stale_tmp_dirs, remove_stale_write_files, size_on_disk
from simdist.data.info import dataset_info, format_info
from simdist.data.reads import READ_PIECE_BYTES, chunk_error, open_arrays, plan_spans, read_spans, verify_array
from simdist.data.schema import (
    EPISODE_CHUNK_ROWS,
    EPISODE_COLUMNS,
    FLAG_FIELDS,
    FLOAT_FIELDS,
    FORMAT,
    SCHEMA_VERSION,
    STD_FLOOR,
    DatasetSpec,
    appended_attrs,
    array_spec,
    check_append,
    check_attrs,
    default_chunk_rows,
    group_doc,
    new_attrs,
    now,
    read_group,
)
from simdist.errors import DatasetError, short_reason

__all__ = [
    "EPISODE_COLUMNS",
    "FLAG_FIELDS",
    "FLOAT_FIELDS",
    "FORMAT",
    "SCHEMA_VERSION",
    "STD_FLOOR",
    "Dataset",
    "DatasetSpec",
    "format_info",
]


def _write_group(path: Path, attrs: dict[str, Any]) -> None:
    """Atomically write the group's zarr.json (same JSON layout as every simdist version)."""
    write_json(path / "zarr.json", group_doc(attrs), indent=1, sort_keys=False, allow_nan=False)


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
               chunk_steps: int | None = None, checksums: bool = True) -> Dataset:
        """Create an empty dataset at PATH (which must not exist) and open it for writing.

        `chunk_steps` sets the rows per chunk of every per-step array; by default each field
        gets a power of two giving ~2 MiB uncompressed chunks (4096..262144 rows).
        `checksums=False` leaves out the crc32c codec (only to measure its cost: reads then
        cannot tell a flipped bit from data; missing chunks are still refused).
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
            raise DatasetError(f"{path}: extra attributes are not JSON-serialisable ({short_reason(e)})") from None
        if chunk_steps is not None and (int(chunk_steps) != chunk_steps or chunk_steps < 1):
            raise DatasetError(f"{path}: chunk_steps must be a positive integer, got {chunk_steps!r}")

        fields = spec.fields()
        attrs = new_attrs(spec, extra)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetError(f"{path}: cannot create parent folder ({short_reason(e)})") from None
        remove_stale_tmp_dirs(path)
        tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            base = tmp.absolute()
            futures = []
            for name, (shape, dtype) in fields.items():
                rows = int(chunk_steps) if chunk_steps else default_chunk_rows(shape, dtype)
                spec_json = array_spec(base / name, [rows, *shape], [rows, *shape], dtype, checksum=checksums)
                futures.append(ts.open(spec_json, create=True))
            erows = min(EPISODE_CHUNK_ROWS, int(chunk_steps)) if chunk_steps else EPISODE_CHUNK_ROWS
            futures.append(ts.open(array_spec(base / "episodes", [erows, 4], [erows, 4], "int64", checksum=checksums),
                                   create=True))
            for f in futures:
                f.result()
            _write_group(tmp, attrs)
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
            raise DatasetError(f"{path}: cannot create dataset ({short_reason(e)})") from None
        return cls.open(path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False, robot: str | None = None,
             obs_size: int | None = None, action_size: int | None = None, command_size: int | None = None,
             require_labels: bool = False, verify: bool = False) -> Dataset:
        """Open and validate a dataset; the keyword expectations raise DatasetError on mismatch.

        `verify` also reads every committed chunk once (:meth:`verify`), so a damaged dataset
        is refused here rather than at the read that meets the damage.
        """
        path = Path(path)
        attrs = read_group(path)
        spec = check_attrs(path, attrs)
        n_transitions, n_episodes = attrs["n_transitions"], attrs["n_episodes"]
        fields = spec.fields()

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

        lock_fd = acquire_write_lock(path) if writable else None
        ds = None
        try:
            stores, episode_store = open_arrays(path, fields, writable, int(attrs["schema_version"]))
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
                    raise chunk_error(path, "episodes", e) from None
                if int(last[0]) + int(last[1]) != n_transitions:
                    raise DatasetError(
                        f"{path}: corrupt dataset (last episode ends at {int(last[0]) + int(last[1])},"
                        f" but n_transitions={n_transitions})"
                    )
            if writable:
                remove_stale_write_files(path, [*fields, "episodes"])
            ds = cls(path, attrs, spec, stores, episode_store, writable, lock_fd)
            if verify:
                ds.verify()
        except BaseException:
            if ds is not None:
                ds.close()  # releases the lock once (its __del__ must not close the fd again)
            elif lock_fd is not None:
                os.close(lock_fd)
            raise
        return ds

    @classmethod
    def open_or_create(cls, path: str | os.PathLike, spec: DatasetSpec, *, extra: dict | None = None,
                       chunk_steps: int | None = None) -> Dataset:
        """Resume: open PATH for writing if it exists and matches `spec`, else create it.

        An existing dataset keeps its own `extra` attributes (compare ``ds.attrs["extra"]`` to
        decide whether a resume is legitimate; use :meth:`update_extra` to record more). It is
        verified first (every chunk read once), so nothing is appended to a damaged dataset.
        """
        path = Path(path)
        if path.exists() or path.is_symlink():
            ds = cls.open(path, writable=True, verify=True)
            diffs = ds.spec.mismatches(spec)
            if diffs:
                ds.close()
                raise DatasetError(f"{path}: existing dataset does not match the requested one ({'; '.join(diffs)})")
            return ds
        return cls.create(path, spec, extra=extra, chunk_steps=chunk_steps)

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
    def schema_version(self) -> int:
        return int(self._attrs["schema_version"])

    @property
    def has_checksums(self) -> bool:
        """Whether every array's chunks carry a crc32c checksum (verified on every read)."""
        stores = [*self._stores.values(), self._episode_store]
        return all(any(c.get("name") == "crc32c" for c in s.spec().to_json()["metadata"].get("codecs", ()))
                   for s in stores)

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
        arrays, lengths, policy, terminated = check_append(p, self.spec, steps, lengths, policy, terminated)
        n_new = int(lengths.shape[0])
        if n_new == 0:
            return
        n0, e0, n_rows = self.n_transitions, self.n_episodes, int(lengths.sum())
        # New counts and running sums (float64) -- computed before touching the disk.
        attrs, table = appended_attrs(p, self._attrs, arrays, lengths, policy, terminated)

        try:
            self._ensure_capacity(n0 + n_rows, e0 + n_new)
            writes = [self._stores[name][n0 : n0 + n_rows].write(a) for name, a in arrays.items()]
            writes.append(self._episode_store[e0 : e0 + n_new].write(table))
            for w in writes:
                w.result()
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{p}: writing {n_new} episodes failed ({short_reason(e)})") from None
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
            raise DatasetError(f"{self.path}: extra attributes are not JSON-serialisable ({short_reason(e)})") from None
        attrs["updated"] = now()
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
            _write_group(self.path, attrs)
        except OSError as e:
            raise DatasetError(f"{self.path}: cannot commit metadata ({short_reason(e)})") from None

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
                    raise chunk_error(self.path, "episodes", e) from None
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
            raise chunk_error(self.path, field, e) from None

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
        piece = max(chunk, READ_PIECE_BYTES // row_bytes)
        out_off = np.concatenate([[0], np.cumsum(lens)[:-1]])
        spans = plan_spans(starts.tolist(), stops.tolist(), out_off.tolist(), chunk, piece)
        try:
            read_spans(store, spans, out, piece)
        except Exception as e:
            raise chunk_error(self.path, field, e) from None
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
        except Exception as e:
            raise DatasetError(f"{self.path}: reading episode {i} failed ({short_reason(e)})") from None
        out = {}
        for k, f in futs.items():
            try:
                out[k] = np.asarray(f.result())
            except Exception as e:
                raise chunk_error(self.path, k, e, what=f"episode {i}") from None
        return out

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

    def verify(self) -> int:
        """Read every committed chunk of every array once (piecewise, ~64 MiB at a time), so a
        missing chunk file, a crc32c mismatch or an undecodable chunk anywhere raises its
        one-line DatasetError now. Returns the number of chunks read."""
        chunks = verify_array(self.path, "episodes", self._episode_store, self.n_episodes)
        for name, store in self._stores.items():
            chunks += verify_array(self.path, name, store, self.n_transitions)
        return chunks

    def size_on_disk(self) -> int:
        return size_on_disk(self.path)

    def info(self, verify: bool = False) -> dict[str, Any]:
        """Everything ``simdist data info PATH`` prints (JSON-serialisable); `verify` first reads
        every chunk (:meth:`verify`) and reports how many were read."""
        return dataset_info(self, self.verify() if verify else None)
