"""The ``simdist data info`` report: :func:`dataset_info` (a JSON-serialisable dict) and
:func:`format_info` (its text)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from simdist.data.fs import size_on_disk

if TYPE_CHECKING:
    from simdist.data.dataset import Dataset

__all__ = ["dataset_info", "format_info"]


def dataset_info(ds: Dataset, verified_chunks: int | None = None) -> dict[str, Any]:
    """Everything ``simdist data info PATH`` prints (JSON-serialisable); see :meth:`Dataset.info`.
    `verified_chunks`: the number of chunks :meth:`Dataset.verify` read, None if not verified."""
    spec = ds.spec
    attrs = ds.attrs
    n, e = ds.n_transitions, ds.n_episodes
    eps = ds.episodes()
    lengths = eps[:, 1]
    policies: dict[int, dict[str, int]] = {}
    for pol in np.unique(eps[:, 2]).tolist():
        sel = eps[:, 2] == pol
        policies[int(pol)] = {"episodes": int(sel.sum()), "transitions": int(lengths[sel].sum())}
    flag = attrs.get("flag_sums", {})
    stats = {}
    if n > 0:
        stats = {k: {"mean": np.atleast_1d(m).tolist(), "std": np.atleast_1d(s).tolist()}
                 for k, (m, s) in ds.stats().items()}
    return {
        "path": str(ds.path),
        "robot": spec.robot,
        "source": spec.source,
        "schema_version": int(ds.schema_version),
        "control_dt": spec.control_dt,
        "labels": spec.labels,
        "n_transitions": n,
        "n_episodes": e,
        "duration_s": n * spec.control_dt,
        "size_bytes": size_on_disk(ds.path),
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
        "verified_chunks": verified_chunks,
        "checksums": ds.has_checksums,
        "extra": ds.extra,
        "created": attrs.get("created"),
        "updated": attrs.get("updated"),
    }


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
    verified = info.get("verified_chunks")
    if verified is not None:
        how = ("crc32c checksums match, none missing" if info.get("checksums")
               else "and decoded (no checksums in this dataset)")
        lines.append(f"integrity      all {verified:,} chunks read: {how}")
    else:
        lines.append("integrity      chunks not verified")
    if info.get("created"):
        lines.append(f"created        {info['created']} (updated {info.get('updated')})")
    return "\n".join(lines)
