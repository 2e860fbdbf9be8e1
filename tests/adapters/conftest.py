"""Adapter files made by the tests (see makers.py) for the tiny Vega the shared engine holds, plus a few
that must be refused, in one folder per kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssdxl.adapters.synthetic import make_embedding, make_lora
from ssdxl.models.loading import load_components


@pytest.fixture(scope="session")
def adapter_dirs(tiny_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(lora folder, embedding folder) for the tiny Vega; an SDXL-made LoRA and an LCM-named one among them."""
    root = tmp_path_factory.mktemp("adapters")
    loras, embeddings = root / "loras", root / "embeddings"
    vega = load_components(tiny_dir("vega"))
    make_lora(vega, loras / "style.safetensors", seed=1)
    make_lora(vega, loras / "kohya_style.safetensors", fmt="kohya", alpha=2.0, seed=2)
    make_lora(vega, loras / "unet_only.safetensors", seed=3, text_encoders=False)
    make_lora(vega, loras / "lcm-lora-tiny.safetensors", seed=4, scale=0.05)
    make_lora(load_components(tiny_dir("sdxl-base")), loras / "made_for_sdxl.safetensors", seed=5)
    make_embedding(vega, embeddings / "mytok.safetensors", vectors=2, seed=6)
    make_embedding(vega, embeddings / "sd1tok.safetensors", vectors=1, seed=7, one_tower=True)
    return loras, embeddings
