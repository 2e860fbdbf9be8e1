"""Fixtures for the server tests; the helpers they use are in serverkit.py."""

from __future__ import annotations

import shutil

import pytest
from serverkit import MODEL, start_thread_server

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def adapter_dirs(tiny_dir, tmp_path_factory):
    """(lora folder, embedding folder) the shared server serves: two LoRAs for the tiny Vega, one made for
    another architecture, an embedding that fits and one that does not (one tower, CLIP-L wide)."""
    from ssdxl.adapters.synthetic import make_embedding, make_lora
    from ssdxl.models.loading import load_components

    root = tmp_path_factory.mktemp("server-adapters")
    loras, embeddings = root / "loras", root / "embeddings"
    vega = load_components(tiny_dir(MODEL))
    make_lora(vega, loras / "style.safetensors", seed=1)
    make_lora(vega, loras / "other.safetensors", fmt="kohya", alpha=2.0, seed=2)
    make_lora(
        load_components(tiny_dir("sdxl-refiner")), loras / "made_for_refiner.safetensors", seed=5, text_encoders=False
    )
    make_embedding(vega, embeddings / "mytok.safetensors", vectors=2, seed=6)
    make_embedding(vega, embeddings / "sd1tok.safetensors", vectors=1, seed=7, one_tower=True)
    return loras, embeddings


@pytest.fixture(scope="session")
def server(tiny_dir, adapter_dirs, tmp_path_factory):
    """A server without API keys, with the LoRA and embedding folders above, shared by the tests of one process."""
    loras, embeddings = adapter_dirs
    handle, stop = start_thread_server(
        tmp_path_factory.mktemp("server"), tiny_dir(MODEL), lora_dirs=[loras], embedding_dirs=[embeddings]
    )
    yield handle
    stop()


@pytest.fixture
def browser():
    """Headless Chromium through playwright, for the web page tests; they skip without either."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
