"""The newcomer's command with no backend chosen: the small built-in model stays in eager PyTorch (no export, a
one-image run is faster so); ``SSDXL_BACKEND=openvino`` exports it on the first run (with a progress bar and
without the tracer's warnings) and reads the cache on the next."""

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


def test_builtin_model_runs_eager_by_default_and_exports_once_when_asked(tmp_path):
    default, params = generate(tmp_path, "default")
    assert params["backend"] == "torch" and "OpenVINO export" not in default.stderr
    assert not (tmp_path / "cache" / "openvino").exists()
    first, params = generate(tmp_path, "first", backend="openvino")
    assert params["backend"] == "openvino"
    assert "OpenVINO export of" in first.stderr and "TracerWarning" not in first.stderr
    second, again = generate(tmp_path, "second", backend="openvino")
    assert again["backend"] == "openvino" and "OpenVINO export of" not in second.stderr
    assert Image.open(tmp_path / "first.png").tobytes() == Image.open(tmp_path / "second.png").tobytes()
