"""An operator's ``--max-side`` holds for the images a request makes besides its first pass: a hires fix's second pass
and an outpaint's grown canvas are refused when the request arrives (a 422 naming the field the client sent), by the
same rules the engine and the CLI apply with the shared limit (``MAX_SIDE``), which stay as they were."""

import base64
import io

import pytest
import requests
from PIL import Image
from serverkit import start_thread_server, wait_for_jobs

from ssdxl.control import outpaint
from ssdxl.errors import FieldError, UserError
from ssdxl.sampling import limits
from ssdxl.sampling.request import GenerationRequest, Hires

LOWERED = 512
TINY = {"prompt": "p", "steps": 2, "seed": 1}
NATIVE = {**TINY, "guidance_scale": 5, "scheduler": "Euler"}
A1111 = {**TINY, "cfg_scale": 5, "sampler_name": "Euler", "denoising_strength": 0.5, "hr_second_pass_steps": 2}


@pytest.fixture(scope="module")
def lowered(tiny_dir, tmp_path_factory):
    """A server of the tiny model with ``--max-side 512`` (its 64x64 default stays well under it)."""
    from serverkit import MODEL

    config_limits = limits.RequestLimits(max_side=LOWERED)
    handle, stop = start_thread_server(tmp_path_factory.mktemp("max-side"), tiny_dir(MODEL), limits=config_limits)
    yield handle
    stop()


def b64_png(size=(64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def assert_field(response, field, *words):
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and body["error"]["param"] == field, body
    assert body["detail"][0]["loc"] == ["body", *field.split(".")], body
    assert all(word in body["error"]["message"] for word in words), body


def post(server, path, body):
    return requests.post(f"{server.url}{path}", json=body, timeout=60)


# ---------------------------------------------------------------------- the server, with --max-side 512


@pytest.mark.parametrize(
    "hires",
    [
        {"scale": 4, "upscaler": "Latent"},  # 256x256 first: 1024x1024, under the shared 2048 but over 512
        {"width": 768, "upscaler": "Latent"},  # one side keeps the aspect: 768x768
    ],
)
def test_a_hires_pass_over_the_operators_side_is_refused_on_the_jobs_api(lowered, hires):
    response = post(lowered, "/v2/jobs", {**NATIVE, "width": 256, "height": 256, "hires": hires})
    assert_field(response, "hires", "second pass", f"between {limits.MIN_SIDE} and {LOWERED}")


def test_a_hires_pass_of_both_sides_is_refused_without_a_first_pass_size(lowered):
    response = post(lowered, "/v2/jobs", {**NATIVE, "hires": {"width": 768, "height": 520, "upscaler": "Latent"}})
    assert_field(response, "hires", "768x520", str(LOWERED))


def test_enable_hr_over_the_operators_side_is_refused_under_its_own_name(lowered):
    body = {**A1111, "width": 256, "height": 256, "enable_hr": True, "hr_scale": 2.5, "hr_upscaler": "Latent"}
    assert_field(post(lowered, "/sdapi/v1/txt2img", body), "enable_hr", "640x640", str(LOWERED))


@pytest.mark.parametrize("size", [{}, {"width": 64, "height": 64}])  # the canvas is the image made, even resized
def test_an_outpaint_canvas_over_the_operators_side_is_refused(lowered, size):
    body = {**NATIVE, **size, "init_image": b64_png(), "outpaint": {"right": 456}}  # 64 + 456 = 520
    assert_field(post(lowered, "/v2/jobs", body), "outpaint", "520x64", f"at most {LOWERED}")


def test_what_fits_the_operators_side_is_accepted_and_made(lowered):
    hires = post(lowered, "/v2/jobs", {**NATIVE, "width": 64, "height": 64, "hires": {"scale": 2, "steps": 2}})
    grown = post(lowered, "/v2/jobs", {**NATIVE, "init_image": b64_png(), "outpaint": {"right": 32}})
    assert hires.status_code == 202 and grown.status_code == 202, (hires.text, grown.text)
    done = wait_for_jobs(lowered.url, [hires.json()["id"], grown.json()["id"]], timeout=180)
    assert [job["status"] for job in done] == ["succeeded", "succeeded"], [job.get("error") for job in done]
    sizes = [Image.open(io.BytesIO(requests.get(job["images"][0]["url"], timeout=30).content)).size for job in done]
    assert sizes == [(128, 128), (96, 64)]


# ---------------------------------------------------------------------- one rule each, the side limit a parameter


def hires_request(**hires) -> GenerationRequest:
    return GenerationRequest("p", width=1024, height=1024, hires=Hires(**hires))


def test_the_hires_rule_takes_the_side_limit():
    limits.check_hires_size(hires_request(scale=2))  # 2048: the shared limit, as before
    with pytest.raises(FieldError) as caught:
        limits.check_hires_size(hires_request(scale=2.01))
    assert caught.value.field == "hires" and "2056x2056" in caught.value.reason and "2048" in caught.value.reason
    with pytest.raises(FieldError) as caught:
        limits.check_hires_size(hires_request(scale=1.5), "enable_hr", LOWERED)
    assert caught.value.field == "enable_hr" and "1536x1536 (first pass 1024x1024)" in caught.value.reason
    limits.check_hires_size(GenerationRequest("p", width=256, height=256, hires=Hires(scale=2)), max_side=LOWERED)


def test_the_outpaint_rule_takes_the_side_limit():
    image = Image.new("RGB", (64, 64))
    assert outpaint.check_sides((0, 0, 1984, 0), image, None) == (0, 0, 1984, 0)  # 2048: the shared limit
    with pytest.raises(FieldError, match="2056x64; its sides must be at most 2048"):
        outpaint.check_sides((0, 0, 1992, 0), image, None)
    assert outpaint.check_sides((0, 0, 448, 0), image, None, LOWERED) == (0, 0, 448, 0)
    with pytest.raises(FieldError, match="at most 512") as caught:
        outpaint.check_sides((0, 0, 456, 0), image, None, LOWERED)
    assert caught.value.field == "outpaint"
    with pytest.raises(UserError, match="needs an init image"):  # what is wrong with the sides themselves comes first
        outpaint.check_sides((0, 0, 456, 0), None, None, LOWERED)


def test_the_request_contract_holds_the_canvas_to_the_limits_it_is_given():
    grown = GenerationRequest("p", init_image=Image.new("RGB", (64, 64)), outpaint=(0, 0, 456, 0))
    limits.check_request(grown)  # the shared limit
    with pytest.raises(FieldError) as caught:
        limits.check_request(grown, limits.RequestLimits(max_side=LOWERED))
    assert caught.value.field == "outpaint" and "520x64" in caught.value.reason
    for malformed in ((0, 0, -8, 0), (8, 0, 0), (0.5, 0, 0, 0)):  # left to outpaint.check_sides, which says why
        limits.check_request(GenerationRequest("p", init_image=Image.new("RGB", (64, 64)), outpaint=malformed))
