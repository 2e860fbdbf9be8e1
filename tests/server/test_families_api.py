"""Model families on the server: each model's family in the model lists (read from configs, nothing loaded), an SD 1.5
model served beside SDXL, clip skip on the native and A1111 APIs, and a per-model VAE (``--model-vae``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
from PIL import Image
from serverkit import MODEL, start_thread_server, wait_for_jobs

from ssdxl.errors import UserError
from ssdxl.models.components import build_components
from ssdxl.models.presets import get_preset
from ssdxl.server.registry import ModelRegistry

TINY = {"width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    vae = build_components(get_preset("vega", "tiny"), seed=9).vae
    vae.save_pretrained(root / "other-vae")
    models = {"sd15": str(tiny_dir("sd15")), "vega-vae": str(tiny_dir(MODEL))}
    handle, stop = start_thread_server(root / "data", tiny_dir(MODEL), models=models,
                                       model_vaes={"vega-vae": str(root / "other-vae")})  # fmt: skip
    yield handle
    stop()


def job_image(url: str, **fields) -> tuple[np.ndarray, dict]:
    response = requests.post(f"{url}/v2/jobs", json={"prompt": "a red circle", **TINY, **fields}, timeout=30)
    assert response.status_code == 202, response.text
    job = wait_for_jobs(url, [response.json()["id"]], timeout=300)[0]
    assert job["status"] == "succeeded", job
    image = requests.get(job["images"][0]["url"], timeout=30).content
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.int16), job


def test_model_lists_name_each_family(served):
    info = requests.get(f"{served.url}/v2/models", timeout=10).json()
    assert info["families"]["sd15"] == "sd1"
    assert info["families"][MODEL] == "sdxl" and info["families"]["shapes"] == "sdxl"
    listed = {m["model_name"]: m["family"] for m in requests.get(f"{served.url}/sdapi/v1/sd-models", timeout=10).json()}
    assert listed["sd15"] == "sd1"


def test_sd15_and_clip_skip_on_the_native_and_a1111_apis(served):
    plain, _ = job_image(served.url, model="sd15")
    skipped, job = job_image(served.url, model="sd15", clip_skip=2)
    assert plain.shape == (64, 64, 3) and not np.array_equal(plain, skipped)
    assert "Clip skip: 2" in job["images"][0]["infotext"]
    body = {"prompt": "a red circle", **TINY, "override_settings": {"sd_model_checkpoint": "sd15",
            "CLIP_stop_at_last_layers": 2}}  # fmt: skip
    response = requests.post(f"{served.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    assert "Clip skip: 2" in json.loads(response.json()["info"])["infotexts"][0]
    bad = requests.post(f"{served.url}/v2/jobs", json={"prompt": "x", "clip_skip": 0}, timeout=10)
    assert bad.status_code == 422 and "clip_skip" in bad.text


def test_a_model_vae_decodes_that_models_images(served):
    own, _ = job_image(served.url, model=MODEL)
    swapped, job = job_image(served.url, model="vega-vae")
    assert np.abs(own - swapped).max() > 10
    assert "VAE: other-vae" in job["images"][0]["infotext"]


def test_model_vae_for_an_unknown_model_or_missing_file_stops_start_up(tiny_dir, tmp_path):
    with pytest.raises(UserError, match="--model-vae names unknown"):
        ModelRegistry({MODEL: str(tiny_dir(MODEL))}, vaes={"nope": str(tmp_path)})
    with pytest.raises(UserError, match="no such file"):
        ModelRegistry({MODEL: str(tiny_dir(MODEL))}, vaes={MODEL: str(tmp_path / "missing")})
