"""Atomic file writes: a reader sees either the old complete file or the new one, never a part.

Every JSON, text and figure file that simdist writes goes through here: the data is written to
a unique temporary file beside the target, flushed and fsynced, then renamed over the target,
and the directory entry is fsynced, so a kill or a power loss leaves the old or the new file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` (a directory) durable; best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file, fsync, rename, fsync of the directory)."""
    write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: Path, obj: Any, *, indent: int = 2, sort_keys: bool = True, allow_nan: bool = True) -> None:
    """Write `obj` as JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan) + "\n")


def write_with(path: Path, writer) -> None:
    """Atomically create `path` with `writer(tmp_path)`, for files written by a library (a
    matplotlib figure, say). The temporary file keeps the target's suffix so format detection
    by extension still works."""
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
