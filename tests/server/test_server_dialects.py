"""Existing client code, unchanged, against the server: Segmind's snippet, the openai package, webuiapi."""

import base64
import io
import json

import numpy as np
import requests
from PIL import Image
from serverkit import MODEL

from ssdxl.sampling.request import GenerationRequest


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_close(a, b):
    # float32 on CPU: images that ran in one UNet batch with others can differ by a level or two
    diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
    assert diff.max() <= 2


def test_segmind_seed_snippet(server, engine):
    # the seeds' code, word for word apart from the URL and a small size/step count
    data = {
        "prompt": "A beautiful farmer working in paddy field",
        "negative_prompt": "ugly, tiling, poorly drawn hands",
        "samples": 1,
        "scheduler": "UniPC",
        "num_inference_steps": "3",
        "guidance_scale": "9",
        "seed": "42",
        "img_width": "64",
        "img_height": "64",
        "base64": False,
    }
    response = requests.post(f"{server.url}/v1/{MODEL}", json=data, headers={"x-api-key": "YOUR_API_KEY"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(response.content))
    assert img.format == "JPEG" and img.size == (64, 64) and response.headers["x-seed"] == "42"
    again = requests.post(f"{server.url}/v1/{MODEL}", json={**data, "base64": True}).json()
    assert base64.b64decode(again["image"]) == response.content  # same seed, same picture
    alone = engine.generate(GenerationRequest(data["prompt"], data["negative_prompt"], 64, 64, 3, 9.0, "UniPC", 42))
    jpeg = io.BytesIO()
    alone.images[0].image.save(jpeg, format="JPEG", quality=95)
    assert_close(Image.open(jpeg), img)


def test_segmind_sdxl_snippet_with_refiner_flag_and_style(server):
    data = {"prompt": "a panda", "style": "base", "samples": 2, "num_inference_steps": 2, "guidance_scale": 8,
            "strength": 0.2, "high_noise_fraction": 0.8, "seed": 468685, "img_width": 64, "img_height": 64,
            "refiner": True, "base64": True}  # fmt: skip
    body = requests.post(f"{server.url}/v1/{MODEL}", json=data).json()
    assert body["seeds"] == [468685, 468686] and len(body["images"]) == 2


def test_openai_generations_b64_and_url(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    result = client.images.generate(
        model=MODEL, prompt="a red circle", n=2, size="64x64", response_format="b64_json", extra_body={"steps": 2}
    )
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    assert [i.size for i in images] == [(64, 64)] * 2 and images[0].format == "PNG"
    linked = client.images.generate(model="dall-e-3", prompt="a red circle", size="64x64", extra_body={"steps": 2})
    fetched = requests.get(linked.data[0].url)  # no key needed: the link is signed
    assert fetched.ok and Image.open(io.BytesIO(fetched.content)).size == (64, 64)


def test_openai_edit_repaints_only_the_transparent_area(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 32))
    result = client.images.edit(
        image=("in.png", png_bytes(source), "image/png"),
        mask=("mask.png", png_bytes(mask), "image/png"),
        prompt="a blue square",
        size="64x64",
        response_format="b64_json",
        extra_body={"steps": 2},
    )
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).convert("RGB"))
    assert (out[32:, :] == (200, 30, 30)).all() and (out[:32, 32:] == (200, 30, 30)).all()
    assert not (out[:32, :32] == (200, 30, 30)).all()


def test_webuiapi_txt2img_img2img_and_model_options(server):
    import webuiapi

    port = int(server.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    assert MODEL in api.util_get_model_names()
    api.util_set_model(MODEL)
    assert api.util_get_current_model() == MODEL
    assert "DPM++ 2M Karras" in api.util_get_sampler_names()
    result = api.txt2img(prompt="a dog", width=64, height=64, steps=2, seed=3, batch_size=2, sampler_name="Euler a")
    assert [i.size for i in result.images] == [(64, 64)] * 2
    assert result.info["seed"] == 3 and result.info["all_seeds"] == [3, 4]
    assert "Seed: 4" in result.info["infotexts"][1] and "Sampler: Euler a" in result.images[0].info["parameters"]
    init = Image.new("RGB", (64, 64), (30, 200, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    edited = api.img2img(images=[init], mask_image=mask, prompt="x", width=64, height=64, steps=3, mask_blur=0,
                         denoising_strength=0.9, sampler_name="DPM++ 2M", scheduler="Karras")  # fmt: skip
    out = np.asarray(edited.image.convert("RGB"))
    assert (out[32:, :] == (30, 200, 30)).all() and "DPM++ 2M Karras" in edited.info["infotexts"][0]
    progress = api.get_progress()
    assert {"progress", "eta_relative", "state", "current_image"} <= set(progress)
    assert api.interrupt() == {}


def test_a1111_answer_shape_and_override_settings(server):
    body = {"prompt": "p", "steps": 2, "width": 64, "height": 64, "seed": 9,
            "override_settings": {"sd_model_checkpoint": MODEL}}  # fmt: skip
    answer = requests.post(f"{server.url}/sdapi/v1/txt2img", json=body).json()
    assert set(answer) == {"images", "parameters", "info"}
    info = json.loads(answer["info"])
    assert info["seed"] == 9 and info["all_seeds"] == [9] and info["infotexts"][0].startswith("p\n")
    assert answer["parameters"]["prompt"] == "p"
