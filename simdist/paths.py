"""Output paths checked before any work starts, and created with one-line errors.

Every command validates where it will write (`--out`, `--record`, `--json`) before it loads,
compiles or trains anything, so a bad path costs nothing and leaves nothing behind:

- `check_output_dir(path)`: a directory to write into (a run, a model, a dataset). It may
  exist as a directory; it must not be a file, nor lie under a file; the nearest existing
  folder on its way (itself when it exists) must be writable. Nothing is created.
- `check_output_file(path)`: a file to write (a JSON report). It must not be a directory;
  its folder must exist or be creatable, as for `check_output_dir`. Nothing is created.
- `make_output_dir(path)`: create the directory (and its parents) when the work begins; an
  OSError becomes the same one-line error instead of a traceback.

Each failure is an `OutputPathError` (a `ConfigError`, so a `SimdistError`): one line naming
the path and the reason. Writability is judged with `os.access` (through `_writable`), which
also sees a read-only file system. Permission bits do not stop root, and neither does
`os.access` for root: a directory that root may write into counts as writable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from simdist.errors import ConfigError, short_reason


class OutputPathError(ConfigError):
    """An output path that cannot be written: a file where a folder must be, a folder under a
    file, a read-only location."""


def _writable(directory: Path) -> bool:
    """May this process create entries in `directory`? (Tests replace this to simulate a
    read-only location, since root passes every permission check.)"""
    return os.access(directory, os.W_OK | os.X_OK)


def _label(path: Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def _check_creatable(path: Path, flag: str | None, what: str, symlink_ok: bool = False) -> None:
    """`path` does not exist: its nearest existing ancestor must be a writable directory."""
    if path.is_symlink() and not symlink_ok:
        raise OutputPathError(f"{_label(path, flag)}: is a broken symbolic link; remove it or choose another path")
    for parent in Path(os.path.abspath(path)).parents:
        if not parent.exists():
            if parent.is_symlink():
                raise OutputPathError(f"{_label(path, flag)}: cannot create the {what}: {parent} is a broken "
                                      "symbolic link")
            continue
        if not parent.is_dir():
            raise OutputPathError(f"{_label(path, flag)}: cannot create the {what}: {parent} is a file, "
                                  "not a directory")
        if not _writable(parent):
            raise OutputPathError(f"{_label(path, flag)}: cannot create the {what}: {parent} is not writable")
        return


def _stat_errors_are_one_line(check):
    """A stat that fails (a folder on the way that cannot be searched) is a one-line error too."""

    @functools.wraps(check)
    def wrapped(path: str | os.PathLike, *args, **kw) -> Path:
        try:
            return check(path, *args, **kw)
        except OSError as e:
            raise OutputPathError(f"{path}: cannot be checked ({short_reason(e, with_type=False)})") from None

    return wrapped


@_stat_errors_are_one_line
def check_output_dir(path: str | os.PathLike, flag: str | None = "--out", *, not_a_dataset: bool = False) -> Path:
    """Check that `path` can be a directory this run writes into (see the module docstring);
    returns it as a Path. Raises OutputPathError (one line) otherwise; creates nothing. With
    `not_a_dataset`, a simdist dataset (a folder with zarr.json) is refused too: a run or a
    model written into it would mix its files with the data's."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{_label(path, flag)}: exists and is not a directory; choose another path")
        if not_a_dataset and (path / "zarr.json").exists():
            raise OutputPathError(f"{_label(path, flag)}: is a dataset (it holds zarr.json); choose another directory")
        if not _writable(path):
            raise OutputPathError(f"{_label(path, flag)}: the directory is not writable")
        return path
    _check_creatable(path, flag, "directory")
    return path


@_stat_errors_are_one_line
def check_output_file(path: str | os.PathLike, flag: str | None = "--json") -> Path:
    """Check that `path` can be written as a file (replaced atomically if it exists): not a
    directory, in a folder that exists and is writable or can be created. Raises
    OutputPathError (one line) otherwise; creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{_label(path, flag)}: is a directory; give a file path")
    if path.exists():
        if not path.is_file():
            raise OutputPathError(f"{_label(path, flag)}: exists and is not a regular file")
        parent = path.parent
        if not _writable(parent):  # an atomic write creates a temporary file beside it
            raise OutputPathError(f"{_label(path, flag)}: its folder {parent} is not writable")
        return path
    _check_creatable(path, flag, "file", symlink_ok=True)  # a dangling link is replaced
    return path


def make_output_dir(path: str | os.PathLike, flag: str | None = "--out") -> Path:
    """Create the directory `path` and its parents (fine if it exists); an OSError (a file in
    the way, a read-only or full disk) becomes one-line OutputPathError naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"{_label(path, flag)}: exists and is not a directory; choose another path") from None
        raise OutputPathError(f"{_label(path, flag)}: cannot create the directory "
                              f"({short_reason(e, with_type=False)})") from None
    return path
