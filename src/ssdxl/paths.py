"""Where files are: ssdxl's own per-user cache (hashes, exported runtimes), and the model files users keep
in folders (LoRAs, embeddings, upscalers), found by name."""

from __future__ import annotations

import os
from pathlib import Path


def files_by_stem(folders: list[Path], suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files by stem, searched recursively; the first folder given wins a name clash. The run folders
    ``ssdxl finetune`` leaves beside its outputs (``NAME.run/``) hold checkpoints, not models."""
    found: dict[str, Path] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            inside_run = any(p.suffix == ".run" for p in path.relative_to(folder).parents)
            if path.suffix.lower() in suffixes and path.is_file() and not inside_run:
                found.setdefault(path.stem, path.resolve())
    return found


def cache_dir() -> Path:
    root = os.environ.get("SSDXL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ssdxl"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder, removed when the process exits: benchmarks write gigabytes of exports and
    weights there, which must not pile up run after run."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path
