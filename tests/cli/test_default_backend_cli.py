"""The newcomer's command with no backend chosen: the built-in model runs in OpenVINO, exported on the first run
(with a progress bar and without the tracer's warnings) and read from the cache on the next; ``--dtype float32``
and ``SSDXL_BACKEND=torch`` keep PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("openvino")


def generate(tmp_path, name: str, *args: str, backend: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k != "SSDXL_BACKEND"}  # the tests' own default is PyTorch
    env["SSDXL_CACHE"] = str(tmp_path / "cache")
    if backend:
        env["SSDXL_BACKEND"] = backend
    out = tmp_path / f"{name}.png"
    command = [sys.executable, "-m", "ssdxl.cli.main", "generate", "a red circle", "-o", str(out), "--seed", "5"]
    done = subprocess.run([*command, "--steps", "4", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        return done, json.loads(image.text["ssdxl"])


def test_builtin_model_exports_once_then_reads_the_cache(tmp_path):
    first, params = generate(tmp_path, "first")
    assert params["backend"] == "openvino"
    assert "OpenVINO export of" in first.stderr and "TracerWarning" not in first.stderr
    second, again = generate(tmp_path, "second")
    assert again["backend"] == "openvino" and "OpenVINO export of" not in second.stderr
    assert Image.open(tmp_path / "first.png").tobytes() == Image.open(tmp_path / "second.png").tobytes()
    _, exact = generate(tmp_path, "exact", "--dtype", "float32")
    assert exact["backend"] == "torch"
    _, chosen = generate(tmp_path, "chosen", backend="torch")
    assert chosen["backend"] == "torch"
