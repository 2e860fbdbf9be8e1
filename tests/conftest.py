"""Shared fixtures: tiny random pipelines built once per test session (same structure as the real
presets, toy widths), and an engine holding the tiny Vega (fewest blocks, fastest) + the tiny refiner."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ssdxl's cache (model hashes, OpenVINO exports) goes to a fresh folder, so no test sees another's exports
os.environ["SSDXL_CACHE"] = tempfile.mkdtemp(prefix="ssdxl-test-cache-")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """A function preset -> folder of a tiny random pipeline, cached for the session."""
    from ssdxl.models.components import build_components
    from ssdxl.models.presets import get_preset

    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, Path] = {}

    def make(preset: str) -> Path:
        if preset not in made:
            made[preset] = build_components(get_preset(preset, "tiny"), seed=0).save(root / preset)
        return made[preset]

    return make


@pytest.fixture(scope="session")
def engine(tiny_dir):
    from ssdxl.sampling.engine import Engine

    return Engine.load(tiny_dir("vega"), refiner=tiny_dir("sdxl-refiner"), device="cpu", dtype="float32")
