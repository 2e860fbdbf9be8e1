"""Internal checkpoints: everything needed to continue a stage exactly where it stopped.

One file per stage (``checkpoints/<stage>.pt``), overwritten atomically, so a run killed mid-write
still has its previous checkpoint. These are torch pickles of our own making, not a distribution
format: the deliverable is the diffusers folder written by ``export``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def checkpoint_path(run_dir: Path, stage: str) -> Path:
    return run_dir / "checkpoints" / f"{stage}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` plus the global torch RNG (noise, timesteps, dropout draw from it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint and restore the global torch RNG it was saved with."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    torch.set_rng_state(state.pop("torch_rng"))
    return state
