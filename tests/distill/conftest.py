"""A tiny teacher with something to remove: the 'tiny' training architecture (2 levels, 32 px
images) with two resnets per level and depth-4 transformer stacks, built once per session; and
one CPU thread per test module."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ssdxl.models.presets import Preset


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on a busy 2-core machine two OpenMP
    threads stall each other (measured: these tests 10 min with two threads, 30 s with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def teacher_preset() -> Preset:
    from ssdxl.training.config import architecture

    preset, _ = architecture("tiny")
    unet = {**preset.unet, "layers_per_block": 2, "transformer_layers_per_block": [1, 4]}
    return dataclasses.replace(preset, name="tiny-teacher", unet=unet)


@pytest.fixture(scope="session")
def teacher_dir(teacher_preset: Preset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ssdxl.models.components import build_components

    return build_components(teacher_preset, seed=0).save(tmp_path_factory.mktemp("teacher") / "tiny-teacher")
