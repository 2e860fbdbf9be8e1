"""Fixtures for the server tests; the helpers they use are in serverkit.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from pgkit import running_server
from serverkit import MODEL, free_port, start_thread_server, wait_until

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


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server per test process (``pgkit``); skips without PostgreSQL."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(postgres):
    """A fresh empty database on the test PostgreSQL, as a ``--store`` URL."""
    return postgres.new_database()


@pytest.fixture
def redis_url(tmp_path):
    """A real Redis server for the scale-out tests; skips without redis-server or rq."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    pytest.importorskip("rq", reason="rq is not installed (pip install '.[serve]')")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    from redis import Redis

    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: _pings(Redis.from_url(url)), 30, "redis-server to start")
    yield url
    process.terminate()
    process.wait(timeout=10)


def _pings(client) -> bool:
    try:
        return client.ping()
    except Exception:
        return False
