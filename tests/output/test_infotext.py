from PIL import Image

from ssdxl.output.files import request_from_png, save_image
from ssdxl.output.infotext import build_infotext, parse_infotext
from ssdxl.sampling.request import GeneratedImage, GenerationRequest

PARAMS = {
    "prompt": "a red circle, 8k",
    "negative_prompt": "blurry",
    "steps": 25,
    "scheduler": "Euler a",
    "guidance_scale": 7.0,
    "seed": 42,
    "width": 1024,
    "height": 768,
    "strength": None,
}


def test_infotext_has_a1111_shape_and_parses_back():
    text = build_infotext(PARAMS, model_name="ssd-1b", model_hash="1a2b3c4d5e", version="0.1.0")
    assert text.splitlines()[0] == "a red circle, 8k"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    assert text.splitlines()[2].startswith("Steps: 25, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 1024x768")
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "a red circle, 8k" and parsed["negative_prompt"] == "blurry"
    assert parsed["Model hash"] == "1a2b3c4d5e" and parsed["Version"] == "ssdxl 0.1.0"


def test_a1111_png_is_read_into_a_request(tmp_path):
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text(
        "parameters", "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 9, Size: 512x640, Model: sdxl"
    )
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=meta)
    request, stored = request_from_png(tmp_path / "a1111.png")
    assert (request.prompt, request.steps, request.scheduler, request.guidance_scale, request.seed) == (
        "a cat",
        20,
        "DPM++ 2M Karras",
        6.5,
        9,
    )
    assert (request.width, request.height) == (512, 640) and stored["model"] == "sdxl"


def test_png_keeps_the_full_request(tmp_path):
    request = GenerationRequest("a cat", seed=3, steps=4, original_size=(512, 512))
    params = {**request.to_params(), "model": "m"}
    generated = GeneratedImage(Image.new("RGB", (8, 8)), 3, "a cat\nSteps: 4", params)
    path = save_image(generated, tmp_path / "x.png")
    back, stored = request_from_png(path)
    assert back == request and stored["model"] == "m"
