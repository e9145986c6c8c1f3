"""Training windows for the world model: history H and horizon T, sampled from a Dataset.

A window anchored at local step ``t`` of an episode of length ``L`` holds (numpy, float32,
leading batch axis B)::

    hist_obs [B, H, O]  o_{t-H} .. o_{t-1}      (the H complete transitions before t)
    hist_act [B, H, A]  a_{t-H} .. a_{t-1}
    obs      [B, T+1, O]  o_t .. o_{t+T}
    act      [B, T, A]  a_t .. a_{t+T-1}
    command  [B, T, C]  c_t .. c_{t+T-1}           (when the dataset has commands)
    reward   [B, T]     r(s_i, a_i),  i = t .. t+T-1   (labelled data)
    value    [B, T]     V(s_{i+1}),  i = t .. t+T-1    (labelled data; state reached after a_i)
    expert   [B, T]     0/1                             (labelled data)
    noisy    [B, T]     0/1                             (only when requested in `fields`)
    expert_action [B, T, A]  the expert's action at s_t .. s_{t+T-1} (datasets that have it)

History steps before the episode start (t-H+j < 0) are padded with o_0 and ZERO actions, so
windows can be anchored from step 0. Valid anchors satisfy ``0 <= t`` and ``t + T <= L - 1``
(every target observation lies inside the episode); episodes shorter than T+1 steps give no
windows, and no window ever crosses an episode boundary.

Train / held-out split: by whole episode, deterministic and stable as the dataset grows.
Episode ``i`` is held out iff ``frac(i * golden_ratio) < heldout_fraction`` (a low-discrepancy
sequence, so the held-out share is within O(log n) episodes of the requested fraction). That
rule always holds out episode 0 (when the fraction is > 0), which guarantees at least one
held-out episode whenever ``n_episodes >= 2``; a single-episode dataset keeps it in train.

Memory: when the split's transitions (of episodes long enough to give a window) fit in
``max_resident_transitions``, they are loaded once (one read per field per contiguous run
of episodes on disk). Otherwise the sampler is *streaming*: it keeps a resident random subset
of about ``max_resident_transitions`` transitions, chosen as random on-disk blocks of
neighbouring episodes (so reads stay chunk-efficient), and replaces it every
``refresh_every`` calls of :meth:`WindowSampler.sample`. The next subset is loaded in a
background thread while the current one is in use; the swap happens exactly at call numbers
``k * refresh_every`` (blocking if the load is not finished), so sampling is reproducible for
a given seed and rng.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import numpy as np

from simdist.data.dataset import Dataset
from simdist.errors import DatasetError

__all__ = ["LABEL_FIELDS", "WindowSampler", "heldout_mask"]

_GOLDEN = (5**0.5 - 1) / 2  # frac(golden ratio)
_SPLITS = ("train", "heldout", "all")
_SPLIT_NAMES = {"train": "training", "heldout": "held-out", "all": "full"}
#: The per-step fields a window loads by default, besides obs and action, when the dataset has them.
LABEL_FIELDS = ("command", "reward", "value", "expert")
_OUT_KEYS = {"command": "command", "reward": "reward", "value": "value", "expert": "expert", "noisy": "noisy",
             "expert_action": "expert_action"}


def heldout_mask(n_episodes: int, heldout_fraction: float) -> np.ndarray:
    """[n_episodes] bool: which episodes form the held-out split (see the module docstring)."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    i = np.arange(n_episodes, dtype=np.float64)
    mask = np.mod(i * _GOLDEN, 1.0) < heldout_fraction
    if n_episodes < 2:
        mask[:] = False
    return mask


class WindowSampler:
    """Samples (history, horizon) windows from one split of a :class:`Dataset`.

    `fields` restricts which per-step fields are loaded (``obs`` and ``action`` always are);
    by default: obs, action, command (if any), and reward, value, expert for labelled data.
    """

    def __init__(self, dataset: Dataset, history: int, horizon: int, *, split: str = "train",
                 heldout_fraction: float = 0.1, seed: int = 0, max_resident_transitions: int = 4_000_000,
                 refresh_every: int = 200, fields: tuple[str, ...] | None = None):
        p = dataset.path
        if int(history) != history or history < 0:
            raise DatasetError(f"{p}: window history must be an integer >= 0, got {history!r}")
        if int(horizon) != horizon or horizon < 1:
            raise DatasetError(f"{p}: window horizon must be an integer >= 1, got {horizon!r}")
        if split not in _SPLITS:
            raise DatasetError(f"{p}: split must be one of {', '.join(_SPLITS)}, got {split!r}")
        if int(max_resident_transitions) != max_resident_transitions or max_resident_transitions < 1:
            raise DatasetError(f"{p}: max_resident_transitions must be a positive integer")
        if not 0.0 <= heldout_fraction < 1.0:
            raise DatasetError(f"{p}: heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
        if int(refresh_every) != refresh_every or refresh_every < 1:
            raise DatasetError(f"{p}: refresh_every must be a positive integer")
        self.dataset = dataset
        self.history = int(history)
        self.horizon = int(horizon)
        self.split = split
        self.heldout_fraction = float(heldout_fraction)
        self.seed = int(seed)
        self.max_resident_transitions = int(max_resident_transitions)
        self.refresh_every = int(refresh_every)

        available = dataset.field_names
        if fields is None:
            wanted = ["obs", "action"] + [f for f in LABEL_FIELDS if f in available]
        else:
            unknown = [f for f in fields if f not in available]
            if unknown:
                raise DatasetError(
                    f"{p}: requested field(s) {', '.join(repr(f) for f in unknown)} not in the dataset"
                    f" (fields: {', '.join(available)})"
                )
            wanted = ["obs", "action"] + [f for f in fields if f not in ("obs", "action")]
        self.fields = tuple(dict.fromkeys(wanted))

        # Episodes of the split that are long enough to give at least one window.
        eps = dataset.episodes()
        held = heldout_mask(len(eps), self.heldout_fraction)
        in_split = {"train": ~held, "heldout": held, "all": np.ones(len(eps), bool)}[split]
        name = _SPLIT_NAMES[split]
        if not in_split.any():
            raise DatasetError(
                f"{p}: the {name} split is empty ({len(eps)} episodes, heldout_fraction={self.heldout_fraction:g})"
            )
        long_enough = in_split & (eps[:, 1] >= self.horizon + 1)
        if not long_enough.any():
            raise DatasetError(
                f"{p}: no episode of the {name} split is longer than horizon+1 = {self.horizon + 1} steps"
                f" ({int(in_split.sum())} episodes, longest {int(eps[in_split, 1].max())})"
            )
        self._cand = np.nonzero(long_enough)[0]  # episode indices, increasing start order
        self._cand_start = eps[self._cand, 0]
        self._cand_len = eps[self._cand, 1]
        self.split_episodes = int(len(self._cand))
        self.split_transitions = int(self._cand_len.sum())
        self.streaming = self.split_transitions > self.max_resident_transitions

        self._calls = 0
        self._generation = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._next: concurrent.futures.Future | None = None
        if self.streaming:
            chunk = max(dataset.chunk_rows(f) for f in self.fields)
            self._block_rows = int(max(1, min(chunk, self.max_resident_transitions // 4)))
            self._set(self._load(self._choose(0)))
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="simdist-windows")
            self._next = self._executor.submit(lambda: self._load(self._choose(1)))
        else:
            self._set(self._load(self._cand))

    # ---- resident set ------------------------------------------------------------------------

    def _choose(self, generation: int) -> np.ndarray:
        """Episode indices of the streaming resident set number `generation`."""
        rng = np.random.default_rng([self.seed, generation, 0x5EED])
        block = self._cand_start // self._block_rows
        uniq, inv = np.unique(block, return_inverse=True)
        rank = rng.permutation(len(uniq))[inv]
        order = np.lexsort((self._cand_start, rank))
        cum = np.cumsum(self._cand_len[order])
        k = max(1, int(np.searchsorted(cum, self.max_resident_transitions, side="right")))
        return np.sort(self._cand[order[:k]])

    def _load(self, episodes: np.ndarray) -> dict[str, Any]:
        eps = self.dataset.episodes()[episodes]
        starts, lengths = eps[:, 0], eps[:, 1]
        # Merge episodes that are contiguous on disk into runs: one read per run and field.
        brk = np.ones(len(starts), bool)
        brk[1:] = starts[1:] != starts[:-1] + lengths[:-1]
        run_id = np.cumsum(brk) - 1
        run_start = starts[brk]
        run_stop = np.zeros(len(run_start), np.int64)
        np.maximum.at(run_stop, run_id, starts + lengths)
        data = {f: self.dataset.read_ranges(f, run_start, run_stop) for f in self.fields}

        rows = int(lengths.sum())
        itype = np.int32 if rows + self.horizon + 1 < 2**31 else np.int64
        offset = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(itype)
        n_anchor = (lengths - self.horizon).astype(np.int64)
        total = int(n_anchor.sum())
        first = np.repeat(offset, n_anchor)
        local = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n_anchor) - n_anchor, n_anchor)
        anchor = (first + local).astype(itype)
        return {"data": data, "anchor": anchor, "first": first.astype(itype),
                "episodes": episodes, "rows": rows}

    def _set(self, resident: dict[str, Any]) -> None:
        self._data = resident["data"]
        self._anchor = resident["anchor"]
        self._first = resident["first"]
        self.resident_episodes = np.asarray(resident["episodes"])
        self.resident_transitions = int(resident["rows"])

    @property
    def n_windows(self) -> int:
        """Valid anchors in the resident set (the whole split unless streaming)."""
        return int(self._anchor.shape[0])

    def _maybe_refresh(self) -> None:
        if not self.streaming or self._calls == 0 or self._calls % self.refresh_every:
            return
        assert self._next is not None and self._executor is not None
        resident = self._next.result()
        self._generation += 1
        self._set(resident)
        gen = self._generation + 1
        self._next = self._executor.submit(lambda: self._load(self._choose(gen)))

    def close(self) -> None:
        """Stop the background loader (streaming mode). Sampling the current set still works."""
        if self._executor is not None:
            if self._next is not None:
                self._next.cancel()
            self._executor.shutdown(wait=False)
            self._executor = None
            self._next = None
            self.streaming = False  # no more refreshes

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ---- sampling ----------------------------------------------------------------------------

    def _gather(self, anchor: np.ndarray, first: np.ndarray) -> dict[str, np.ndarray]:
        H, T = self.history, self.horizon
        anchor = anchor.astype(np.int64)
        first = first.astype(np.int64)
        obs, act = self._data["obs"], self._data["action"]
        hrow = anchor[:, None] + np.arange(-H, 0)
        pad = hrow < first[:, None]
        hrow = np.where(pad, first[:, None], hrow)
        hist_act = act[hrow]
        hist_act[pad] = 0.0
        frow = anchor[:, None] + np.arange(T + 1)
        arow = frow[:, :T]
        out = {
            "hist_obs": obs[hrow],
            "hist_act": hist_act,
            "obs": obs[frow],
            "act": act[arow],
        }
        for f in self.fields:
            if f in _OUT_KEYS:
                out[_OUT_KEYS[f]] = self._data[f][arow].astype(np.float32, copy=False)
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`batch_size` windows drawn uniformly (with replacement) from the resident anchors."""
        self._maybe_refresh()
        self._calls += 1
        i = rng.integers(0, self.n_windows, size=int(batch_size))
        return self._gather(self._anchor[i], self._first[i])

    def iterate(self, batch_size: int, *, max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Deterministic pass over the resident windows, for evaluation.

        Windows come in a fixed pseudo-random order (seeded by `seed`, so any prefix is a
        representative subset; stop early or pass `max_batches`). Every batch has exactly
        `batch_size` windows: the last one is padded by wrapping around to the first windows,
        and each batch carries ``mask`` [B] float32 (1 = new window, 0 = padding) so that
        averages can ignore the padding. Streaming samplers iterate over their current
        resident subset only.
        """
        B = int(batch_size)
        if B < 1:
            raise DatasetError(f"{self.dataset.path}: batch_size must be >= 1, got {batch_size!r}")
        n = self.n_windows
        anchor, first = self._anchor, self._first
        order = np.random.default_rng([self.seed, 0xE7A1]).permutation(n)
        n_batches = -(-n // B)
        if max_batches is not None:
            n_batches = min(n_batches, int(max_batches))
        for b in range(n_batches):
            idx = np.arange(b * B, (b + 1) * B)
            mask = (idx < n).astype(np.float32)
            sel = order[idx % n]
            batch = self._gather(anchor[sel], first[sel])
            batch["mask"] = mask
            yield batch
