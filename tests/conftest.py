"""Shared fixtures: tiny random pipelines built once per test session (same structure as the real
presets, toy widths), and an engine holding the tiny Vega (fewest blocks, fastest) + the tiny refiner."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One thread count for every engine and every reference pipeline in a test process, set before torch starts its
# OpenMP (parity tests compare bits, and ssdxl.speed.threads would otherwise choose per model): the cores shared out
# among pytest-xdist's workers, since OpenMP threads that outnumber the cores wait at every barrier for one another
# (docs/performance.md, "CPU threads beside other work"). Subprocesses the tests start inherit it.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
if "OMP_NUM_THREADS" not in os.environ or os.environ.get("SSDXL_TEST_THREADS"):  # a user's own count is kept
    os.environ["OMP_NUM_THREADS"] = os.environ["SSDXL_TEST_THREADS"] = str(THREADS)  # xdist workers recompute it
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ssdxl's cache (model hashes, OpenVINO exports) goes to a fresh folder, so no test sees another's exports
os.environ["SSDXL_CACHE"] = tempfile.mkdtemp(prefix="ssdxl-test-cache-")
# Engines run eager PyTorch unless a test asks for a backend (tests/speed/test_openvino.py tests auto's choice): the
# default, OpenVINO for bfloat16 models, would export every tiny model each test process loads.
os.environ["SSDXL_BACKEND"] = "torch"
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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
