"""Import MJX once, quietly.

mujoco-mjx prints "Failed to import warp" on every import when its optional GPU backend is
absent, which is the normal case on a CPU. Every simdist module imports MJX from here.
"""

from __future__ import annotations

import contextlib
import io

with contextlib.redirect_stdout(io.StringIO()):
    from mujoco import mjx  # noqa: F401

__all__ = ["mjx"]
