"""Helpers for the server tests: in-process servers (uvicorn in a thread), `ssdxl` subprocesses, waiting, the web page.

Every server runs the tiny random Vega at 64x64 with 2-3 steps and one CPU thread (on a shared
2-core machine more threads only fight), so the whole folder runs in a couple of minutes.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image

MODEL = "vega"
STARTUP_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).ok
    except requests.ConnectionError:
        return False


@dataclass
class ThreadServer:
    url: str
    data_dir: Path
    app: object

    @property
    def store(self):
        return self.app.state.service.store


def start_thread_server(
    data_dir: Path, model_dir: Path, *, models: dict[str, str] | None = None, **settings
) -> tuple[ThreadServer, callable]:
    """A server of ``model_dir`` as MODEL (plus ``models``) in this process; ``settings`` are ServerConfig's."""
    import uvicorn

    from ssdxl.server.app import create_app
    from ssdxl.server.config import ServerConfig

    models = {MODEL: str(model_dir), **(models or {})}
    config = ServerConfig(data_dir=data_dir, models=models, device="cpu", dtype="float32", threads=1, **settings)
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: server.started, 60, "the in-thread server to start")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)

    return ThreadServer(url, data_dir, app), stop


def start_keyed_server(data_dir: Path, model_dir: Path, names=("alice", "bob")) -> tuple[ThreadServer, dict, callable]:
    """A server whose store holds a key for each of ``names``: (server, {name: request headers}, stop)."""
    from ssdxl.server.auth import KeyStore
    from ssdxl.server.config import ServerConfig
    from ssdxl.server.storage import open_data

    store, _ = open_data(ServerConfig(data_dir=data_dir))
    keys = KeyStore(store.db)
    tokens = {name: {"x-api-key": keys.add(name)[1]} for name in names}
    handle, stop = start_thread_server(data_dir, model_dir)
    return handle, tokens, stop


def spawn_server(data_dir: Path, model_dir: Path, *args: str, log: Path) -> tuple[subprocess.Popen, str]:
    """A real `ssdxl serve` process; returns it and its URL once /health answers."""
    port = free_port()
    command = ["serve", "--model", f"{MODEL}={model_dir}", "--port", str(port), *args]
    process = spawn_ssdxl(command, data_dir, log)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: healthy(url) or process.poll() is not None, STARTUP_TIMEOUT, "the server to start")
    assert process.poll() is None, log.read_text()
    return process, url


def spawn_ssdxl(args: list[str], data_dir: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ssdxl.cli.main", *args, "--data", str(data_dir), "--device", "cpu"]
    command += ["--dtype", "float32", "--threads", "1"]
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_jobs(url: str, job_ids: list[str], timeout: float, headers=None) -> list[dict]:
    def all_done():
        jobs = [requests.get(f"{url}/v2/jobs/{i}", headers=headers, timeout=10).json() for i in job_ids]
        return jobs if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) else None

    return wait_until(all_done, timeout, f"{len(job_ids)} job(s) to finish", interval=0.3)


def generate_on_page(page, **fields) -> Image.Image:
    """Fill ``fields`` (selector -> value), click Generate and return the new gallery image."""
    before = page.locator("#gallery figure").count()
    for selector, value in fields.items():
        page.fill(selector, value)
    page.click("#generate")
    done = f"document.querySelectorAll('#gallery figure').length > {before} || !document.getElementById('error').hidden"
    page.wait_for_function(done, timeout=60_000)
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    page.wait_for_function("document.querySelector('#gallery figure img').naturalWidth > 0", timeout=30_000)
    url = page.locator("#gallery figure img").first.get_attribute("src")
    return Image.open(io.BytesIO(requests.get(url).content))
