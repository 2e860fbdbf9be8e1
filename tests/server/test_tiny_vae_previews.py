"""Server step previews by the model's tiny VAE: the built-in model's previews are full-size decodes by its shipped
tiny VAE, close to the final image; a model without one keeps the linear map's latent-sized previews."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image

from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.config import ServerConfig
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.runner import Runner
from ssdxl.server.storage import open_data
from ssdxl.server.store import SUCCEEDED


@pytest.fixture
def data(tmp_path):
    return open_data(ServerConfig(data_dir=tmp_path))


def previews_of(store, storage, model: str, steps: int = 4) -> tuple[list[Image.Image], Image.Image]:
    """(every preview the runner recorded, the job's final image) of one job on ``model``."""
    request = GenerationRequest("a large red circle on a navy background", seed=3, width=64, height=64, steps=steps)
    job_id = uuid.uuid4().hex
    store.add(job_id, owner=None, model="m", request=storage.save_request(job_id, request))
    runner = Runner(store, storage, ModelRegistry({"m": model}, device="cpu", dtype="float32"), preview_every=2)
    previews, progress = [], store.progress

    def spy(worker, updates):
        previews.extend(Image.open(io.BytesIO(preview)) for _, _, _, preview in updates if preview is not None)
        progress(worker, updates)

    store.progress = spy
    assert runner.run_next()
    job = store.get(job_id)
    assert job.status == SUCCEEDED
    final = Image.open(io.BytesIO(storage.read(job.result["images"][0]["file"])))
    return previews, final


def test_builtin_model_previews_are_tiny_vae_decodes(data):
    previews, final = previews_of(*data, "shapes")
    assert [p.size for p in previews] == [(64, 64), (64, 64)]  # full size; the linear map's are 16x16
    last = np.asarray(previews[-1].convert("RGB"), dtype=np.float32)
    error = np.abs(last - np.asarray(final.convert("RGB"), dtype=np.float32)).mean()
    assert error < 12, error  # the last step's preview is the image, as the tiny VAE draws it


def test_model_without_tiny_vae_keeps_the_linear_preview(tiny_dir, data):
    previews, _ = previews_of(*data, str(tiny_dir("vega")))
    assert [p.size for p in previews] == [(8, 8), (8, 8)]


def test_fast_decode_over_http_and_a_model_without_a_tiny_vae_refused_on_arrival(tiny_dir, tmp_path):
    import requests
    from serverkit import MODEL, start_thread_server, wait_for_jobs

    from ssdxl.errors import UserError

    handle, stop = start_thread_server(tmp_path / "data", tiny_dir(MODEL), models={"shapes": "shapes"})
    try:
        body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "fast_decode": True}
        refused = requests.post(f"{handle.url}/v2/jobs", json=body, timeout=60)  # the tiny Vega has none
        assert refused.status_code == 422 and refused.json()["field"] == "fast_decode", refused.text
        job = requests.post(f"{handle.url}/v2/jobs", json={**body, "model": "shapes"}, timeout=60).json()
        done = wait_for_jobs(handle.url, [job["id"]], timeout=120)[0]
        assert done["status"] == SUCCEEDED and "Tiny VAE: taes-shapes" in done["images"][0]["infotext"], done
    finally:
        stop()
    with pytest.raises(UserError, match="--model-tiny-vae names unknown model"):
        ModelRegistry({"m": "x"}, tiny_vaes={"other": str(tmp_path)})
    pickled = tmp_path / "taesd_decoder.pth"
    pickled.write_bytes(b"not loaded")
    with pytest.raises(UserError, match="safetensors files or diffusers folders only"):
        ModelRegistry({"m": "x"}, tiny_vaes={"m": str(pickled)})
    with pytest.raises(UserError, match="no config.json"):
        ModelRegistry({"m": "x"}, tiny_vaes={"m": str(tmp_path)})


def test_fast_decode_from_the_page(browser, tiny_dir, tmp_path):
    """The box shows for a model with a tiny VAE only, and a checked box decodes the image with it."""
    import requests
    from serverkit import MODEL, generate_on_page, start_thread_server

    handle, stop = start_thread_server(tmp_path / "data", tiny_dir(MODEL), models={"shapes": "shapes"})
    try:
        fast = requests.get(f"{handle.url}/v2/models", timeout=30).json()["fast_decode"]
        assert "shapes" in fast and MODEL not in fast
        page = browser.new_page()
        page.goto(handle.url)
        page.wait_for_selector("#model option[value='shapes']", state="attached")
        page.select_option("#model", MODEL)
        assert page.locator("#fast-decode-label").is_hidden()  # the tiny Vega has none
        page.select_option("#model", "shapes")
        page.check("#fast-decode")
        image = generate_on_page(page, **{"#prompt": "a red circle", "#width": "64", "#height": "64", "#steps": "2"})
        assert image.size == (64, 64)
        job = requests.get(f"{handle.url}/v2/jobs", params={"limit": 1}, timeout=30).json()[0]
        assert job["params"]["fast_decode"] is True and "Tiny VAE: taes-shapes" in job["images"][0]["infotext"]
        page.select_option("#model", MODEL)  # switching to a model without one clears the box
        assert page.locator("#fast-decode-label").is_hidden() and not page.is_checked("#fast-decode")
    finally:
        stop()


def test_a_folder_fine_tuned_from_the_builtin_model_keeps_fast_decode(tmp_path, tiny_dir):
    """A copy of the built-in model under another name (what a fine-tune saves) reads the same latents: the server
    lets its requests decode fast, as the engine would."""
    import shutil

    from ssdxl.models import builtin

    copy = shutil.copytree(builtin.resolve("shapes"), tmp_path / "my-shapes")
    registry = ModelRegistry({"mine": str(copy), "vega": str(tiny_dir("vega"))}, device="cpu")
    assert registry.has_tiny_vae("mine") and not registry.has_tiny_vae("vega")
