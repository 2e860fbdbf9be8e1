"""Where ssdxl keeps files of its own: a per-user cache (hashes, exported runtimes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("SSDXL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ssdxl"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
