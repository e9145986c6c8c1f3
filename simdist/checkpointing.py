"""Checkpoints through orbax: a pytree and a JSON metadata item per step, written atomically,
with a digest of the arrays that every restore verifies.

Orbax writes each step into a temporary folder and renames it when complete, so a killed
run never leaves a step that looks valid. Every simdist checkpoint stores, in its metadata,
the config it was trained with and a `kind` that says what it holds.

Orbax does not checksum what it writes, so a flipped byte in a weights file would load as a
wrong number. `save` therefore records, in the metadata item under `_digest`, the sha256 of
every leaf (its dtype, shape and bytes), keyed by the leaf's path; `restore` recomputes it
and names the first leaf that differs. Three failures are told apart, each one line:
  - the saved tree does not have the template's leaves, shapes or dtypes: "does not match
    this model/config" (another config, another robot);
  - orbax or tensorstore cannot read a file (truncated, deleted, undecodable): "is corrupt
    or truncated";
  - the arrays read back differ from what was saved: "is corrupt (leaf ... differs)".
Checkpoints written before digests existed load without verification.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from simdist.errors import CheckpointError, short_reason

logging.getLogger("absl").setLevel(logging.WARNING)

DIGEST_KEY = "_digest"  # where the array digest lives in a checkpoint's JSON metadata


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaves(tree: Any) -> dict[str, Any]:
    """{path: leaf}; paths join the keys' plain names with '/', so a list index, an int dict
    key and orbax's string key for it give the same path."""
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _leaf_digest(x: Any) -> dict[str, Any]:
    a = np.asarray(x)  # tobytes() is C order whatever the layout
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": h.hexdigest()}


def tree_digest(tree: Any) -> dict[str, Any]:
    """The digest `save` records: sha256 over each leaf's dtype, shape and bytes, by path."""
    return {"algorithm": "sha256", "leaves": {p: _leaf_digest(x) for p, x in _leaves(jax.device_get(tree)).items()}}


def _structure_difference(saved: dict[str, tuple[list[int], str]], template: Any) -> str | None:
    """Why the saved {path: (shape, dtype)} cannot restore into `template`, or None."""
    want = {p: (list(np.shape(x)), str(np.dtype(x.dtype)) if hasattr(x, "dtype") else None)
            for p, x in _leaves(template).items()}
    missing, extra = sorted(want.keys() - saved.keys()), sorted(saved.keys() - want.keys())
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else [])
        return "; ".join(parts)
    for p in sorted(want):
        (shape, dtype), (saved_shape, saved_dtype) = want[p], saved[p]
        if list(saved_shape) != shape:
            return f"{p} has shape {tuple(saved_shape)}, expected {tuple(shape)}"
        if dtype is not None and saved_dtype is not None and saved_dtype != dtype:
            return f"{p} has dtype {saved_dtype}, expected {dtype}"
    return None


def _reason(e: BaseException) -> str:
    """One line for a failed orbax read: the innermost cause (tensorstore's own message, which
    names the array and the byte range) rather than orbax's wrapper with a dumped spec."""
    seen = {id(e)}
    while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        e = nxt
    return short_reason(e)


def _ignore_stray_loop_callbacks() -> None:
    """After a failed read, let orbax's and tensorstore's leftovers die quietly.

    When one read of a checkpoint fails, orbax's `asyncio.run` raises and closes its event
    loop while tensorstore is still finishing the other reads of that step. Each of those then
    calls `loop.call_soon_threadsafe` on the closed loop from a C++ thread, and the read
    coroutines left pending are closed when collected; Python reports both through
    `sys.unraisablehook`, as dozens of `RuntimeError: Event loop is closed` and "Exception
    ignored in <coroutine ...>" tracebacks on stderr (and asyncio logs "Task exception was
    never retrieved" for the collected tasks). They have nothing left to deliver, so
    exactly those are dropped (everything else goes to the previous hook), and the pending
    coroutines are collected now rather than at some later moment.
    """
    _filter_unraisable()
    gc.collect()


def _filter_unraisable() -> None:
    previous = sys.unraisablehook
    if not getattr(previous, "_simdist_filter", False):

        def hook(unraisable):
            exc, obj = unraisable.exc_value, unraisable.object
            if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
                return
            if inspect.iscoroutine(obj) and "orbax" in getattr(obj.cr_code, "co_filename", ""):
                return
            previous(unraisable)

        hook._simdist_filter = True
        sys.unraisablehook = hook


class _DropOrbaxLeftovers(logging.Filter):
    """asyncio logs "Task exception was never retrieved" for each read task of a failed step
    that is collected after orbax gave up on it; the first failure was already reported."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("never retrieved" in msg and "orbax" in msg)


# Installed now, not only after a failure: a late callback can run before the failing call
# has even returned.
_filter_unraisable()
if not any(isinstance(f, _DropOrbaxLeftovers) for f in logging.getLogger("asyncio").filters):
    logging.getLogger("asyncio").addFilter(_DropOrbaxLeftovers())


@contextlib.contextmanager
def _quiet_absl():
    """Silence orbax's warnings (a missing per-item metadata file in a valid older checkpoint)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Checkpoints:
    """A folder of numbered checkpoints, each with `state` (arrays) and `meta` (JSON).

    Usable as a context manager, so that orbax's manager (and its threads) is closed on every
    path, errors included. The asyncio noise a failed read used to print is handled separately
    (see `_ignore_stray_loop_callbacks`): it comes from orbax's own per-call event loop, which
    closing the manager does not reach."""

    def __init__(self, directory: Path, max_to_keep: int | None = None, create: bool = True):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"no checkpoints at {self.directory}")
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create)
        try:
            self._mgr = ocp.CheckpointManager(self.directory, options=options)
        except OSError as e:
            raise CheckpointError(f"cannot open checkpoints at {self.directory}: {short_reason(e)}") from None

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Write `state` and `meta` as `step` (replacing it), with the digest of `state`."""
        state = jax.device_get(state)
        meta = {**{k: v for k, v in meta.items() if k != DIGEST_KEY}, DIGEST_KEY: tree_digest(state)}
        self._mgr.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self._mgr.wait_until_finished()

    def _raw_meta(self, step: int) -> dict[str, Any]:
        try:
            meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # orbax raises many types for a damaged folder
            _ignore_stray_loop_callbacks()
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} is corrupt or truncated (metadata unreadable: {_reason(e)})"
            ) from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {self.directory}/{step} is corrupt (its metadata is not a JSON object)")
        return meta

    def meta(self, step: int) -> dict[str, Any]:
        """The metadata saved with `step` (without the digest)."""
        return {k: v for k, v in self._raw_meta(step).items() if k != DIGEST_KEY}

    def digest(self, step: int) -> dict[str, Any] | None:
        """The array digest recorded with `step`; None for a checkpoint saved before digests."""
        return self._raw_meta(step).get(DIGEST_KEY)

    def _saved_structure(self, step: int, digest: dict[str, Any] | None) -> dict[str, tuple[list[int], str]]:
        where = f"{self.directory}/{step}"
        if digest is not None:
            try:
                return {p: (list(d["shape"]), d["dtype"]) for p, d in digest["leaves"].items()}
            except (KeyError, TypeError, AttributeError):
                raise CheckpointError(f"checkpoint {where} is corrupt (its digest is malformed)") from None
        try:  # no digest: orbax's own record of the tree
            with _quiet_absl(), ocp.StandardCheckpointer() as c:
                md = c.metadata(self.directory / str(step) / "state")
            tree = getattr(md, "item_metadata", md)
            saved = {p: (list(m.shape), str(np.dtype(m.dtype))) for p, m in _leaves(tree).items()}
        except Exception as e:  # noqa: BLE001
            _ignore_stray_loop_callbacks()
            raise CheckpointError(f"checkpoint {where} is corrupt or truncated ({_reason(e)})") from None
        if not saved:  # orbax returns an empty tree when its metadata files are unreadable
            _ignore_stray_loop_callbacks()
            raise CheckpointError(f"checkpoint {where} is corrupt or truncated (no readable array metadata)")
        return saved

    def restore(self, step: int, template: Any) -> Any:
        """Restore `state` into the structure, shapes and dtypes of `template`, and check it
        against the digest saved with it."""
        where = f"{self.directory}/{step}"
        digest = self.digest(step)
        difference = _structure_difference(self._saved_structure(step, digest), template)
        if difference is not None:
            raise CheckpointError(f"checkpoint {where} does not match this model/config ({difference})")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # the tree matched, so this is a file orbax/tensorstore cannot read
            _ignore_stray_loop_callbacks()
            raise CheckpointError(f"checkpoint {where} is corrupt or truncated ({_reason(e)})") from None
        state = out["state"]
        if digest is not None:
            _verify(where, digest, state)
        return state

    def record_digest(self, step: int, template: Any) -> dict[str, Any]:
        """Add the digest to a checkpoint saved without one (the arrays are read, not
        rewritten; only the metadata file changes). Returns the digest."""
        from simdist.atomic import write_json

        state = self.restore(step, template)
        # Hash what was saved: leaves in the template's dtype (jax without x64 reads int64 as int32).
        digest = tree_digest(jax.tree.map(lambda x, t: np.asarray(x).astype(np.asarray(t).dtype), state, template))
        meta = {**self.meta(step), DIGEST_KEY: digest}
        path = self.directory / str(step) / "meta" / "metadata"
        if not path.is_file():
            raise CheckpointError(f"checkpoint {self.directory}/{step} has no metadata file at {path}")
        write_json(path, meta, indent=None, sort_keys=False)
        self._mgr.reload()
        return digest

    def delete(self, step: int) -> None:
        """Remove `step` (no-op when it does not exist)."""
        if step in self._mgr.all_steps():
            self._mgr.delete(step)

    def close(self) -> None:
        self._mgr.close()


def _verify(where: str, digest: dict[str, Any], state: Any) -> None:
    """Raise a one-line CheckpointError naming the first leaf whose bytes differ."""
    saved = digest.get("leaves", {}) if isinstance(digest, dict) else {}
    got = _leaves(jax.device_get(state))
    for p in sorted(got):
        want = saved.get(p)
        if want is None:
            raise CheckpointError(f"checkpoint {where} is corrupt (no digest for leaf {p})")
        a = np.asarray(got[p])
        if str(a.dtype) != want.get("dtype"):  # restored in another dtype (jax without x64): compare as saved
            try:
                a = a.astype(want["dtype"])
            except TypeError:
                pass
        if _leaf_digest(a)["sha256"] != want.get("sha256"):
            raise CheckpointError(f"checkpoint {where} is corrupt: leaf {p} differs from its saved sha256 digest")
