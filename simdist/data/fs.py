"""File-system side of a dataset: the single-writer lock, the cleanup of what killed writers
leave behind, and the size on disk."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
from pathlib import Path

from simdist.errors import DatasetError, short_reason

__all__ = ["LOCK_NAME", "acquire_write_lock", "remove_stale_tmp_dirs", "remove_stale_write_files", "size_on_disk"]

LOCK_NAME = "write.lock"


def acquire_write_lock(path: Path) -> int:
    """Take the advisory write lock ``PATH/write.lock``; returns its file descriptor (close it to
    release; the OS releases it when the process dies)."""
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open for writing ({short_reason(e)})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatasetError(f"{path}: another process (or Dataset object) has it open for writing") from None
    return fd


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return True
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


def remove_stale_tmp_dirs(path: Path) -> None:
    """Remove `PATH.tmp-<pid>-*` leftovers of a `create` whose process is gone."""
    with contextlib.suppress(OSError):
        for p in path.parent.glob(f"{glob.escape(path.name)}.tmp-*"):
            parts = p.name[len(path.name) + len(".tmp-") :].split("-")
            try:
                pid = int(parts[0])
            except ValueError:
                continue
            if pid != os.getpid() and not pid_alive(pid) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def remove_stale_write_files(path: Path, arrays: list[str]) -> None:
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


def size_on_disk(path: Path) -> int:
    """Bytes of every file under `path`."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total
