"""Issue 15: every bad request is a 4xx naming the field (never a 500), A1111's full default payloads are
accepted, 422 bodies are what the OpenAPI schema says, uploads are PNG/JPEG/WebP only, error bodies show no
server paths, and an oversized chunked body is a 413."""

import base64
import io

import pytest
import requests
from PIL import Image
from serverkit import MODEL, start_thread_server

from ssdxl.server.errors import public_text

TINY = {"prompt": "p", "width": 64, "height": 64, "steps": 2}
HUGE_SEED = 9223372036854775800  # fits int64, but seed + samples does not


def encoded(mode="RGB", fmt="PNG", size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode in ("L", "P") else None).save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_field(response, field, status=422):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field and body["error"]["param"] == field, body
    assert field in body["error"]["message"]
    assert isinstance(body["detail"], list) and body["detail"], body
    for item in body["detail"]:
        assert set(item) == {"loc", "msg", "type"} and isinstance(item["loc"], list), item
    assert body["detail"][0]["loc"][-len(field.split(".")) :] == field.split("."), body


# ---------------------------------------------------------------------- 1. no 500s


@pytest.mark.parametrize("value", [["vega"], {"name": "vega"}, 3, "no-such-model"])
def test_a1111_override_checkpoint_of_any_type_is_a_422_naming_it(server, value):
    body = {**TINY, "override_settings": {"sd_model_checkpoint": value}}
    assert_field(requests.post(f"{server.url}/sdapi/v1/txt2img", json=body), "override_settings.sd_model_checkpoint")


@pytest.mark.parametrize("seed", [HUGE_SEED, "1e30", "9" * 40, -2, "1.5"])
def test_openai_edit_seeds_out_of_range_are_a_422(server, seed):
    files = {"image": ("x.png", encoded(), "image/png")}
    response = requests.post(f"{server.url}/v1/images/edits", data={"prompt": "p", "seed": str(seed)}, files=files)
    assert_field(response, "seed")


@pytest.mark.parametrize("seed", [HUGE_SEED, 1e30, "1e30", -2, 1.5, 2**70])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/v1/{MODEL}", {"prompt": "p"}),
        ("/v2/jobs", TINY),
        ("/sdapi/v1/txt2img", TINY),
        ("/sdapi/v1/img2img", {**TINY, "init_images": [b64(encoded())]}),
        ("/v1/images/generations", {"prompt": "p"}),
    ],
)
def test_every_dialects_seed_is_checked(server, path, body, seed):
    assert_field(requests.post(f"{server.url}{path}", json={**body, "seed": seed}), "seed")


def test_edit_form_fields_the_json_model_refuses_are_a_422(server):
    files = {"image": ("x.png", encoded(), "image/png")}
    response = requests.post(f"{server.url}/v1/images/edits", data={"prompt": "p", "scheduler": "Nope"}, files=files)
    assert_field(response, "scheduler")


# ---------------------------------------------------------------------- 2. A1111's default payloads

# every field of A1111 1.10's /sdapi/v1/txt2img request with its "off" value, as its /docs shows (size, steps
# and prompt changed so the tiny model runs quickly)
A1111_TXT2IMG = {
    "prompt": "a red circle",
    "negative_prompt": "",
    "styles": [],
    "seed": 7,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": "Euler",
    "scheduler": "Automatic",
    "batch_size": 1,
    "n_iter": 1,
    "steps": 2,
    "cfg_scale": 7,
    "width": 64,
    "height": 64,
    "restore_faces": False,
    "tiling": False,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": 0,
    "denoising_strength": 0,
    "s_min_uncond": 0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 0,
    "override_settings": {},
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": "",
    "refiner_switch_at": 0,
    "disable_extra_networks": False,
    "firstpass_image": "",
    "comments": {},
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": "",
    "hr_sampler_name": "",
    "hr_scheduler": "",
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "force_task_id": "",
    "sampler_index": "Euler",
    "script_name": "",
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
    "infotext": "",
}
A1111_IMG2IMG = {
    **{k: v for k, v in A1111_TXT2IMG.items() if not k.startswith(("hr_", "firstphase_", "enable_hr", "firstpass"))},
    "init_images": [b64(encoded())],
    "resize_mode": 0,
    "image_cfg_scale": 0,
    "mask": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "mask_blur": 0,
    "mask_round": True,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": 0,
    "latent_mask": "",
    "include_init_images": False,
    "denoising_strength": 0.75,
}


@pytest.mark.parametrize(("path", "payload"), [("txt2img", A1111_TXT2IMG), ("img2img", A1111_IMG2IMG)])
def test_a1111_full_default_payloads_are_accepted(server, path, payload):
    response = requests.post(f"{server.url}/sdapi/v1/{path}", json=payload)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (64, 64)


def test_a1111_nulls_and_send_images_false(server):
    nulls = {k: None for k in ("refiner_checkpoint", "refiner_switch_at", "script_name", "alwayson_scripts", "styles",
                               "subseed_strength", "seed_resize_from_h", "infotext", "sampler_name")}  # fmt: skip
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**TINY, **nulls, "sampler_index": "Euler a"})
    assert response.status_code == 200, response.text
    quiet = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**TINY, "send_images": False})
    assert quiet.status_code == 200 and quiet.json()["images"] == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"enable_hr": True}, "denoising_strength"),  # A1111's default payload sends 0: no second pass to run
        ({"restore_faces": True}, "restore_faces"),
        ({"tiling": True}, "tiling"),
        ({"script_name": "x/y plot"}, "script_name"),
        ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts.ADetailer"),
        ({"subseed_strength": 0.5}, "subseed_strength"),
        ({"styles": ["my style"]}, "styles"),
        ({"seed_resize_from_h": 512}, "seed_resize_from_h"),
        ({"disable_extra_networks": True}, "disable_extra_networks"),
        ({"infotext": "a cat\nSteps: 20"}, "infotext"),
        ({"refiner_checkpoint": "refiner", "refiner_switch_at": 0}, "refiner_switch_at"),
        ({"refiner_switch_at": 1.5}, "refiner_switch_at"),
        ({"sampler_name": "", "sampler_index": "Nope"}, "sampler_index"),
    ],
)
def test_a1111_features_switched_on_are_still_refused(server, changes, field):
    assert_field(requests.post(f"{server.url}/sdapi/v1/txt2img", json={**A1111_TXT2IMG, **changes}), field)


# ---------------------------------------------------------------------- 3. 422 bodies and the OpenAPI schema


def test_422_bodies_match_the_openapi_schema(server):
    response = requests.post(f"{server.url}/v2/jobs", json={**TINY, "steps": 0, "width": 7})
    assert_field(response, "width")  # the first bad field; detail lists them all
    body = response.json()
    assert [item["loc"] for item in body["detail"]] == [["body", "width"], ["body", "steps"]]
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"].startswith("width: ")
    assert "input" not in body["detail"][0]  # the request's values (images, secrets) are not echoed

    schema = requests.get(f"{server.url}/openapi.json").json()
    components = schema["components"]["schemas"]
    validation = components["HTTPValidationError"]
    assert validation["properties"]["detail"]["type"] == "array"
    assert set(validation["required"]) == {"detail", "field", "error"}
    assert components["ValidationError"]["required"] == ["loc", "msg", "type"]
    assert set(components["ValidationError"]["properties"]) == set(body["detail"][0])
    assert components["HTTPError"]["properties"]["detail"]["type"] == "string"
    assert set(components["ErrorInfo"]["properties"]) == set(body["error"])
    jobs = schema["paths"]["/v2/jobs"]["post"]["responses"]
    assert jobs["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/HTTPValidationError")
    assert jobs["4XX"]["content"]["application/json"]["schema"]["$ref"].endswith("/HTTPError")


def test_other_errors_keep_a_string_detail(server):
    response = requests.get(f"{server.url}/v2/jobs/nope")
    assert response.status_code == 404 and isinstance(response.json()["detail"], str)
    assert response.json()["error"]["message"] == response.json()["detail"]


def test_broken_json_is_a_422_without_a_field(server):
    response = requests.post(f"{server.url}/v2/jobs", data=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] is None
    assert response.json()["detail"][0]["type"] == "json_invalid"


# ---------------------------------------------------------------------- 4. uploads


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "TIFF"), ("RGB", "BMP"), ("P", "GIF"), ("CMYK", "TIFF")])
def test_uploads_other_than_png_jpeg_webp_are_refused(server, mode, fmt):
    data = encoded(mode, fmt)
    files = {"image": ("x.png", data, "image/png")}
    assert_field(requests.post(f"{server.url}/v1/images/edits", data={"prompt": "p"}, files=files), "image")
    assert_field(requests.post(f"{server.url}/v2/jobs", json={**TINY, "init_image": b64(data)}), "init_image")
    body = {**TINY, "init_images": [b64(data)]}
    assert_field(requests.post(f"{server.url}/sdapi/v1/img2img", json=body), "init_images")
    assert_field(requests.post(f"{server.url}/v1/{MODEL}", json={"prompt": "p", "image": b64(data)}), "image")


@pytest.mark.parametrize(("mode", "fmt"), [("CMYK", "JPEG"), ("P", "PNG"), ("I;16", "PNG"), ("RGBA", "WEBP")])
def test_allowed_formats_in_other_modes_are_converted(server, mode, fmt):
    response = requests.post(f"{server.url}/v2/jobs", json={**TINY, "init_image": b64(encoded(mode, fmt))})
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (f"/v1/{MODEL}", {"prompt": "p", "image": ""}, "image"),
        (f"/v1/{MODEL}", {"prompt": "p", "image": "", "strength": 0.5}, "image"),
        ("/v2/jobs", {**TINY, "init_image": ""}, "init_image"),
        ("/v2/jobs", {**TINY, "init_image": b64(encoded()), "mask_image": ""}, "mask_image"),
        ("/sdapi/v1/img2img", {**TINY, "init_images": [""]}, "init_images"),
    ],
)
def test_empty_image_strings_are_a_422_not_txt2img(server, path, body, field):
    assert_field(requests.post(f"{server.url}{path}", json=body), field)


def test_empty_upload_is_a_422(server):
    files = {"image": ("x.png", b"", "image/png")}
    assert_field(requests.post(f"{server.url}/v1/images/edits", data={"prompt": "p"}, files=files), "image")


# ---------------------------------------------------------------------- 5, 6: paths and body size


@pytest.fixture(scope="module")
def small_server(tiny_dir, tmp_path_factory):
    """A server with a 4 kB body limit and a second model whose file is corrupt, under a data dir."""
    root = tmp_path_factory.mktemp("hardening")
    broken = root / "models dir" / "broken.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(b"\x00" * 64)
    handle, stop = start_thread_server(
        root / "data", tiny_dir(MODEL), models={"broken": str(broken)}, max_body_bytes=4096
    )
    yield handle, root
    stop()


def test_error_bodies_show_no_server_paths(small_server):
    server, root = small_server
    a1111 = {**TINY, "override_settings": {"sd_model_checkpoint": "broken"}}
    answers = [
        requests.post(f"{server.url}/v1/broken", json={"prompt": "p", "base64": True}),
        requests.post(f"{server.url}/sdapi/v1/txt2img", json=a1111),
    ]
    job = requests.post(f"{server.url}/v2/jobs", json={**TINY, "model": "broken"}).json()
    from serverkit import wait_for_jobs

    (failed,) = wait_for_jobs(server.url, [job["id"]], timeout=60)
    assert failed["status"] == "failed" and "broken.safetensors" in failed["error"], failed
    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert "broken.safetensors" in answer.json()["detail"]
    for text in [a.text for a in answers] + [failed["error"]]:
        assert str(root) not in text and "models dir" not in text and "/tmp" not in text, text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "/home/me/models/x.safetensors is not a valid safetensors file",
            "x.safetensors is not a valid safetensors file",
        ),
        ("cannot read /srv/ssdxl/data/images/job.png: denied", "cannot read job.png: denied"),
        ("internal error (FileNotFoundError: [Errno 2] No such file: '/var/lib/ssdxl/a b/c.json')", "c.json"),
        ("could not load /opt/models/vega/: broken", "could not load vega: broken"),
        ("could not load C:\\Users\\me\\vega.safetensors", "could not load vega.safetensors"),
        ("~/loras/style.safetensors", "style.safetensors"),
        ("job abc is still running; follow it at /v2/jobs/abc", "follow it at /v2/jobs/abc"),
        ("see http://127.0.0.1:8000/v2/files/x.png", "http://127.0.0.1:8000/v2/files/x.png"),
        ("a 2/s rate, 60/min", "a 2/s rate, 60/min"),
    ],
)
def test_public_text_keeps_file_names_only(text, shown):
    assert shown in public_text(text, roots=["/var/lib/ssdxl/a b"])
    assert "/home" not in public_text(text) and "/srv" not in public_text(text) and "Users" not in public_text(text)


def chunks(data: bytes, size: int = 1000):
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("path", "content_type", "data"),
    [
        ("/v2/jobs", "application/json", b'{"prompt": "' + b"x" * 9000 + b'"}'),
        ("/v1/images/edits", "multipart/form-data; boundary=xx", b"x" * 9000),  # garbage: was a parser's 400
        ("/v1/images/edits", "text/plain", b"x" * 9000),  # a body the form never reads: was a 422
        ("/v1/images/edits", "application/x-www-form-urlencoded", b"prompt=" + b"x" * 9000),
    ],
)
def test_oversized_chunked_bodies_are_413(small_server, path, content_type, data):
    server, _ = small_server
    response = requests.post(f"{server.url}{path}", data=chunks(data), headers={"content-type": content_type})
    assert response.status_code == 413, response.text
    assert "larger than 4096 bytes" in response.json()["detail"]


def test_small_chunked_bodies_still_work(small_server):
    server, _ = small_server
    data = b'{"prompt": "p", "width": 64, "height": 64, "steps": 2}'
    response = requests.post(
        f"{server.url}/v2/jobs", data=chunks(data, 10), headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text
