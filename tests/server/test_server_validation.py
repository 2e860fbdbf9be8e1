"""Malformed input is a 4xx whose JSON names the field, whichever API it came through."""

import base64
import io

import pytest
import requests
from PIL import Image
from serverkit import MODEL

TINY = {"prompt": "p", "width": 64, "height": 64, "steps": 2}
NOT_AN_IMAGE = base64.b64encode(b"this is text, not a picture").decode()


def png_b64(size=(64, 64)):
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        (f"/v1/{MODEL}", {"prompt": "p", "img_width": 100}, 422, "img_width"),
        (f"/v1/{MODEL}", {"prompt": "p", "img_height": 8192}, 422, "img_height"),
        (f"/v1/{MODEL}", {"prompt": "p", "num_inference_steps": 0}, 422, "num_inference_steps"),
        (f"/v1/{MODEL}", {"prompt": "p", "seed": "abc"}, 422, "seed"),
        (f"/v1/{MODEL}", {"prompt": "p", "scheduler": "Euler z"}, 422, "scheduler"),
        (f"/v1/{MODEL}", {"prompt": "p", "style": "no-such-style"}, 422, "style"),
        (f"/v1/{MODEL}", {"prompt": "p", "image": "%%%not base64"}, 422, "image"),
        ("/v1/no-such-model", {"prompt": "p"}, 422, "model"),
        (f"/v1/{MODEL}", {"negative_prompt": "p"}, 422, "prompt"),
        ("/v2/jobs", {**TINY, "steps": 1000}, 422, "steps"),
        ("/v2/jobs", {**TINY, "init_image": NOT_AN_IMAGE}, 422, "init_image"),
        ("/v2/jobs", {**TINY, "init_image": png_b64((5000, 8))}, 422, "init_image"),
        ("/v2/jobs", {**TINY, "mask_image": png_b64()}, 422, "mask_image"),
        ("/v2/jobs", {**TINY, "model": "/etc/passwd"}, 422, "model"),
        ("/v2/jobs", {**TINY, "refiner": True}, 422, "refiner"),
        ("/v2/jobs", {**TINY, "stepz": 3}, 422, "stepz"),
        ("/v2/jobs", {**TINY, "guidance_scale": -1}, 422, "guidance_scale"),
        ("/sdapi/v1/txt2img", {**TINY, "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, 422, "hr_upscaler"),
        ("/sdapi/v1/txt2img", {**TINY, "batch_size": 8, "n_iter": 2}, 422, "batch_size"),
        ("/sdapi/v1/txt2img", {**TINY, "sampler_name": "Euler", "scheduler": "Polyexponential"}, 422, "scheduler"),
        ("/sdapi/v1/txt2img", {**TINY, "sampler_name": "Nope"}, 422, "sampler_name"),
        ("/sdapi/v1/img2img", {**TINY, "init_images": []}, 422, "init_images"),
        ("/sdapi/v1/options", {"sd_model_checkpoint": "../../x"}, 422, "sd_model_checkpoint"),
        ("/v1/images/generations", {"prompt": "p", "size": "65x64"}, 422, "size"),
        ("/v1/images/generations", {"prompt": "p", "size": "big"}, 422, "size"),
        ("/v1/images/generations", {"prompt": "p", "n": 99}, 422, "n"),
    ],
)
def test_bad_fields_are_named(server, path, body, status, field):
    response = requests.post(f"{server.url}{path}", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and error["error"]["param"] == field and field in error["error"]["message"]
    first = error["detail"][0]  # FastAPI's shape: a list of {loc, msg, type}
    assert (
        set(first) == {"loc", "msg", "type"} and first["loc"][-1] == field and first["msg"] in error["error"]["message"]
    )


def test_engine_user_errors_come_back_as_400(server):
    # strength x steps leaves no step: only the engine knows, when the job runs
    body = {**TINY, "init_image": png_b64(), "strength": 0.1, "steps": 2}
    response = requests.post(f"{server.url}/sdapi/v1/img2img", json={**body, "init_images": [body.pop("init_image")],
                                                                    "denoising_strength": 0.1})  # fmt: skip
    assert response.status_code == 400 and "no step" in response.json()["detail"]


def test_broken_json_and_non_image_uploads(server):
    response = requests.post(f"{server.url}/v2/jobs", data=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    files = {"image": ("x.png", b"GIF89a but not really", "image/png")}
    response = requests.post(f"{server.url}/v1/images/edits", data={"prompt": "p"}, files=files)
    assert response.status_code == 422 and response.json()["field"] == "image"
    response = requests.post(f"{server.url}/v1/images/edits", data={"prompt": "p"})
    assert response.status_code == 422 and response.json()["field"] == "image"
