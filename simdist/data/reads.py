"""Opening and reading a dataset's arrays: their shape and dtype checks, the read planner that
merges row ranges into few large reads, the whole-dataset integrity check, and the translation
of tensorstore read errors (a missing chunk file, a checksum mismatch, an undecodable chunk)
into one-line DatasetError messages naming the chunk file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from simdist.data.schema import fmt_shape, open_spec
from simdist.errors import DatasetError, short_reason

__all__ = ["READ_PIECE_BYTES", "chunk_error", "open_arrays", "plan_spans", "read_spans", "verify_array"]

READ_PIECE_BYTES = 64 << 20  # at most this much is read in one tensorstore request

_FILE = re.compile(r'local file "([^"]+)"')


def chunk_error(path: Path, field: str, e: BaseException, what: str | None = None) -> DatasetError:
    """One-line DatasetError for a failed read of array `field` of the dataset at `path`.

    A missing chunk file, a chunk whose crc32c does not match, and a chunk that does not
    decode each name the chunk file; other failures say `what` was being read.
    """
    text = str(e)
    m = _FILE.search(text)
    label = "the episode table" if field == "episodes" else f"field '{field}'"
    if m:
        file = m.group(1)
        if "NOT_FOUND" in text or "is missing" in text:
            return DatasetError(f"{path}: {label}: chunk file {file} is missing (incomplete dataset)")
        if "DATA_LOSS" in text or "igest mismatch" in text:
            return DatasetError(f"{path}: {label}: chunk checksum mismatch in {file} (corrupt file)")
        return DatasetError(f"{path}: {label}: chunk file {file} is corrupt ({short_reason(e, 120)})")
    return DatasetError(f"{path}: reading {what or label} failed ({short_reason(e)})")


Span = tuple[int, int, list[tuple[int, int, int]]]


def plan_spans(starts: list[int], stops: list[int], out_off: list[int], chunk: int, piece: int) -> list[Span]:
    """Group row ranges into read spans: (span_start, span_stop, [(range_start, range_stop,
    out_offset), ...]). Neighbouring ranges (gap at most one chunk) share a span of at most
    `piece` rows; longer ranges are split into `piece`-row spans."""
    spans: list[Span] = []
    for a, b, o in zip(starts, stops, out_off):
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
    return spans


def read_spans(store: Any, spans: list[Span], out: np.ndarray, piece: int) -> None:
    """Read the planned spans of `store` into `out`, at most ~4 pieces in flight at a time."""

    def finish(batch: list[tuple[Any, int, list[tuple[int, int, int]]]]) -> None:
        for fut, s0, members in batch:
            data = fut.result()
            for a, b, o in members:
                out[o : o + (b - a)] = data[a - s0 : b - s0]

    pending: list[tuple[Any, int, list[tuple[int, int, int]]]] = []
    pending_rows = 0
    for s0, s1, members in spans:
        pending.append((store[s0:s1].read(), s0, members))
        pending_rows += s1 - s0
        if pending_rows >= 4 * piece:
            finish(pending)
            pending, pending_rows = [], 0
    finish(pending)


def verify_array(path: Path, name: str, store: Any, rows: int) -> int:
    """Read rows [0, rows) of `store` piecewise (~64 MiB at a time), so that every chunk under
    them is fetched, checksum-verified and decoded; returns the number of chunks read.
    Raises the one-line DatasetError of :func:`chunk_error` on the first bad chunk."""
    if rows <= 0:
        return 0
    chunk = int(store.chunk_layout.read_chunk.shape[0])
    row_bytes = max(1, int(np.prod(store.shape[1:], dtype=np.int64)) * store.dtype.numpy_dtype.itemsize)
    piece = max(chunk, (READ_PIECE_BYTES // row_bytes) // chunk * chunk)
    try:
        pending = None
        for a in range(0, rows, piece):
            fut = store[a : min(rows, a + piece)].read()
            if pending is not None:
                pending.result()
            pending = fut
        if pending is not None:
            pending.result()
    except Exception as e:
        raise chunk_error(path, name, e) from None
    return -(-rows // chunk)


def open_arrays(path: Path, fields: dict[str, tuple[tuple[int, ...], str]], writable: bool,
                schema_version: int) -> tuple[dict[str, Any], Any]:
    """Open the per-step arrays and the episode table of the dataset at `path` and check their
    per-step shapes and dtypes; returns ({field: store}, episode_store)."""
    base = path.absolute()
    futures = {}
    for name in [*fields, "episodes"]:
        futures[name] = ts.open(open_spec(base, name, schema_version), open=True, read=True, write=writable)
    stores = {}
    for name, fut in futures.items():
        try:
            stores[name] = fut.result()
        except Exception as e:
            if not (base / name / "zarr.json").exists():
                what = "the episode table" if name == "episodes" else f"field '{name}'"
                raise DatasetError(f"{path}: missing {what} (no array at {name}/)") from None
            raise DatasetError(f"{path}: field '{name}' is unreadable ({short_reason(e)})") from None
    expected = dict(fields)
    expected["episodes"] = ((4,), "int64")
    for name, (shape, dtype) in expected.items():
        store = stores[name]
        actual_shape = tuple(int(s) for s in store.shape[1:])
        if store.rank < 1 or actual_shape != tuple(shape):
            raise DatasetError(
                f"{path}: field '{name}' has per-step shape {fmt_shape(actual_shape)},"
                f" expected {fmt_shape(shape)}"
            )
        if np.dtype(store.dtype.numpy_dtype) != np.dtype(dtype):
            raise DatasetError(
                f"{path}: field '{name}' has dtype {store.dtype.name}, expected {dtype}"
            )
    episode_store = stores.pop("episodes")
    return stores, episode_store
