"""ControlNets, IP-Adapters, the hires fix, outpainting and upscalers through the server: sd-webui-controlnet's units
and routes, A1111's hires fields and Extras upscale, and the same features on the native jobs API."""

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageDraw
from serverkit import MODEL, generate_on_page, start_thread_server, wait_for_jobs

CONTROLNET = "tiny-cn"
FOREIGN = "refiner-cn"  # made for the refiner's UNet: other residuals, other text width
UPSCALER = "4x-tiny-esrgan"
IP_ADAPTER = "ip-adapter-random"
IP_FOREIGN = "refiner-ip"  # made for the refiner's UNet: another cross-attention width
BIG_DEFAULT = "big-default"  # the served model again, with a 768x768 default size
TINY = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 5}
A1111 = {**TINY, "cfg_scale": 5, "sampler_name": "Euler"}
NATIVE = {**TINY, "guidance_scale": 5, "scheduler": "Euler"}


@pytest.fixture(scope="module")
def tool_dirs(tiny_dir, tmp_path_factory):
    """(ControlNet folder, upscaler folder, IP-Adapter folder): a ControlNet of the served model whose zero
    convolutions are made random, so it changes the picture, one made for another architecture, a tiny random 4x
    ESRGAN, a random IP-Adapter of the served model and one of the refiner (their image encoder beside them), and a
    pickled file the server must never read."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from ssdxl.control.synthetic import random_ip_adapter
    from ssdxl.models.loading import load_components
    from ssdxl.upscale.models import import_spandrel

    root = tmp_path_factory.mktemp("server-control")
    unet, refiner_unet = load_components(tiny_dir(MODEL)).unet, load_components(tiny_dir("sdxl-refiner")).unet
    random_ip_adapter(unet, root / "ip-adapters", seed=1)
    random_ip_adapter(refiner_unet, root / "refiner-ip").rename(root / "ip-adapters" / f"{IP_FOREIGN}.safetensors")
    (root / "ip-adapters" / "pickled.bin").write_bytes(b"never unpickled")
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(unet)
    with torch.no_grad():
        for block in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            for param in block.parameters():
                param.normal_(0.0, 0.3)
    net.save_pretrained(root / "controlnets" / CONTROLNET)
    ControlNetModel.from_unet(refiner_unet).save_pretrained(root / "controlnets" / FOREIGN)
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    state = {k: v.detach().clone().contiguous() for k, v in esrgan.state_dict().items()}
    state["model.10.bias"] += 0.5  # random weights give near-black output; mid-grey keeps pixels meaningful
    (root / "upscalers").mkdir()
    save_file(state, str(root / "upscalers" / f"{UPSCALER}.safetensors"))
    return root / "controlnets", root / "upscalers", root / "ip-adapters"


@pytest.fixture(scope="module")
def big_default(tiny_dir, tmp_path_factory):
    """The tiny model under another folder whose defaults make 768x768 images: a hires pass at scale 4 on a request
    that leaves the size out would be 3072 a side."""
    source = tiny_dir(MODEL)
    folder = tmp_path_factory.mktemp("big-default") / "model"
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name != "ssdxl.json":
            (folder / entry.name).symlink_to(entry)
    info = json.loads((source / "ssdxl.json").read_text())
    info["defaults"].update(width=768, height=768)
    (folder / "ssdxl.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="module")
def server(tiny_dir, tool_dirs, big_default, tmp_path_factory):
    controlnets, upscalers, ip_adapters = tool_dirs
    handle, stop = start_thread_server(
        tmp_path_factory.mktemp("control-data"),
        tiny_dir(MODEL),
        models={BIG_DEFAULT: str(big_default)},
        controlnet_dirs=[controlnets],
        upscaler_dirs=[upscalers],
        ip_adapter_dirs=[ip_adapters],
    )
    yield handle
    stop()


def square(size=(64, 64)) -> Image.Image:
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="white")
    return image


def b64(image: Image.Image) -> str:
    return base64.b64encode(png(image)).decode()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def txt2img(server, **fields) -> Image.Image:
    response = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**A1111, **fields})
    assert response.status_code == 200, response.text
    return unb64(response.json()["images"][0])


def webui(server):
    import webuiapi

    return webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))


def webui_txt2img(api, **fields):
    """webuiapi's txt2img with a fresh ``alwayson_scripts``: its default dict is shared by every call in the process
    and keeps the ControlNet units of an earlier call."""
    return api.txt2img(**fields, alwayson_scripts={})


def job(server, **fields) -> tuple[dict, Image.Image]:
    response = requests.post(f"{server.url}/v2/jobs", json={**NATIVE, **fields})
    assert response.status_code == 202, response.text
    (done,) = wait_for_jobs(server.url, [response.json()["id"]], timeout=120)
    assert done["status"] == "succeeded", done
    return done, Image.open(io.BytesIO(requests.get(done["images"][0]["url"]).content))


def assert_field(response, field, *words):
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and list(map(str, body["detail"][0]["loc"])) == ["body", *field.split(".")], body
    assert all(word in body["error"]["message"] for word in words), body


# ---------------------------------------------------------------------- ControlNet units


def test_a1111_unit_changes_the_image_and_matches_the_jobs_api(server):
    import webuiapi

    api = webui(server)
    listed = next(name for name in api.controlnet_model_list() if name.startswith(f"{CONTROLNET} ["))
    unit = webuiapi.ControlNetUnit(image=square(), model=listed, resize_mode="Just Resize")  # "name [hash]"
    plain = webui_txt2img(api, **A1111)
    controlled = webui_txt2img(api, **A1111, controlnet_units=[unit])
    assert controlled.image.size == (64, 64)
    assert np.abs(pixels(controlled.image) - pixels(plain.image)).max() > 10  # the unit steered the picture
    done, native = job(server, controls=[{"model": CONTROLNET, "image": b64(square()), "resize_mode": "resize"}])
    assert np.abs(pixels(native) - pixels(controlled.image)).max() <= 2  # same unit, same image (batching aside)
    stored = done["params"]["controls"][0]
    assert stored["model"] == CONTROLNET and stored["image"] == f"{done['id']}-control0.png"  # names, never paths
    again = requests.get(f"{server.url}/v2/files/{stored['image']}")  # the map survives as a file of the job
    assert again.ok and pixels(Image.open(io.BytesIO(again.content))).tolist() == pixels(square()).tolist()


def test_disabled_units_and_units_without_a_model_are_skipped(server):
    plain = txt2img(server)
    units = [
        {"enabled": False, "model": CONTROLNET, "image": b64(square())},
        {"module": "none", "model": "None", "image": ""},
    ]
    skipped = txt2img(server, alwayson_scripts={"ControlNet": {"args": units}})
    assert pixels(skipped).tolist() == pixels(plain).tolist()


def test_an_img2img_unit_without_an_image_maps_the_init_image(server):
    unit = {"model": CONTROLNET, "module": "Canny", "pixel_perfect": True, "control_mode": 2}
    body = {**A1111, "init_images": [b64(square())], "denoising_strength": 0.8}
    response = requests.post(
        f"{server.url}/sdapi/v1/img2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert response.status_code == 200, response.text
    assert unb64(response.json()["images"][0]).size == (64, 64)
    (stored,) = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]["params"]["controls"]
    assert (stored["preprocessor"], stored["processor_res"], stored["guess_mode"]) == (
        "canny",
        64,
        True,
    )  # pixel perfect


@pytest.mark.parametrize(
    ("unit", "field", "word"),
    [
        ({"model": "nope [12345678]"}, "model", "nope"),
        ({"model": "../controlnets/tiny-cn"}, "model", "unknown ControlNet"),
        ({"module": "openpose"}, "module", "openpose"),
        ({"module": "depth_midas"}, "module", "send a depth map with module none"),
        ({"module": "depth_anything_v2"}, "module", "send a depth map with module none"),
        ({"module": "canny", "processor_res": "big"}, "processor_res", "integer"),
        ({"weight": 3}, "weight", "2"),
        ({"guidance_start": 0.5, "guidance_end": 0.5}, "guidance_end", "start"),
        ({"resize_mode": "Stretch"}, "resize_mode", "Just Resize"),
        ({"image": ""}, "image", "image"),
        ({"effective_region_mask": b64(square())}, "effective_region_mask", "not supported"),
    ],
)
def test_bad_a1111_units_are_a_422_naming_the_field(server, unit, field, word):
    unit = {"model": CONTROLNET, "image": b64(square()), **unit}
    response = requests.post(
        f"{server.url}/sdapi/v1/txt2img", json={**A1111, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert_field(response, f"alwayson_scripts.controlnet.args.0.{field}", word)


def test_a1111_resets_out_of_range_settings_as_the_extension_does_and_native_refuses_them(server):
    unit = {"model": CONTROLNET, "image": b64(square()), "module": "canny", "processor_res": 99999,
            "threshold_a": 999, "threshold_b": -1}  # fmt: skip
    response = requests.post(
        f"{server.url}/sdapi/v1/txt2img", json={**A1111, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert response.status_code == 200, response.text
    (stored,) = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]["params"]["controls"]
    assert (stored["processor_res"], stored["threshold_a"], stored["threshold_b"]) == (512, 100, 200)  # the defaults
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64(square())], "controlnet_processor_res": 64}
    given = requests.post(f"{server.url}/controlnet/detect", json=body).json()["images"]
    reset = {**body, "controlnet_threshold_a": 999, "controlnet_threshold_b": 0}
    assert requests.post(f"{server.url}/controlnet/detect", json=reset).json()["images"] == given
    native = {"model": CONTROLNET, "image": b64(square()), "preprocessor": "canny", "threshold_a": 999}
    refused = requests.post(f"{server.url}/v2/jobs", json={**NATIVE, "controls": [native]})
    assert_field(refused, "controls.0.threshold_a", "255")


def test_webuiapi_default_units_and_hires_fix(server):
    """webuiapi's ControlNetUnit sends 512 / 64 / 64 for every module; tile_resample's slider is 1-8."""
    import webuiapi

    api = webui(server)
    listed = next(name for name in api.controlnet_model_list() if name.startswith(f"{CONTROLNET} ["))
    canny = webuiapi.ControlNetUnit(image=square(), module="canny", model=listed)
    tile = webuiapi.ControlNetUnit(image=square(), module="tile_resample", model=listed, weight=0.5)
    fields = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2, "seed": 11}
    result = webui_txt2img(api, **fields, controlnet_units=[canny, tile])
    assert result.image.size == (64, 64)
    stored = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]["params"]["controls"]
    assert [(u["preprocessor"], u["threshold_a"], u["threshold_b"]) for u in stored] == [
        ("canny", 64, 64),
        ("tile_resample", 1.0, 64),  # reset to the slider's default, as sd-webui-controlnet does (no slider b)
    ]
    hires = webui_txt2img(api, **fields, controlnet_units=[canny], enable_hr=True, hr_scale=2)
    assert hires.image.size == (128, 128) and "Hires upscale: 2" in hires.info["infotexts"][0]


def test_a_controlnet_for_another_architecture_fails_its_own_request_only(server):
    unit = {"model": FOREIGN, "image": b64(square())}
    response = requests.post(
        f"{server.url}/sdapi/v1/txt2img", json={**A1111, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert response.status_code == 400 and "another architecture" in response.json()["detail"], response.text
    assert txt2img(server).size == (64, 64)


def test_stored_requests_keep_control_maps_hires_and_outpaint(tmp_path):
    import json

    from ssdxl.sampling.request import ControlUnit, GenerationRequest, Hires, ImagePrompt
    from ssdxl.server.files import FolderFiles
    from ssdxl.server.storage import Storage

    storage = Storage(FolderFiles(tmp_path), "secret")
    translucent = Image.new("RGBA", (8, 8), (1, 2, 3, 128))
    units = [ControlUnit("a", image=square(), scale=0.5), ControlUnit("b", image=translucent, preprocessor="canny")]
    hires = Hires(scale=1.5, upscaler="Lanczos", steps=3)
    job_id = f"{7:032x}"
    prompts = [ImagePrompt("ip", [square(), translucent], 0.5)]
    request = GenerationRequest("p", controls=units, image_prompts=prompts, hires=hires, outpaint=(1, 2, 3, 4))
    record = storage.save_request(job_id, request)
    assert [unit["image"] for unit in record["controls"]] == [f"{job_id}-control0.png", f"{job_id}-control1.png"]
    assert record["image_prompts"][0]["images"] == [f"{job_id}-ip0-0.png", f"{job_id}-ip0-1.png"]
    assert all(storage.read(name) is not None for name in record["image_prompts"][0]["images"])
    again = storage.load_request(json.loads(json.dumps(record)))  # as the job store keeps it
    assert [(u.model, u.scale, u.preprocessor) for u in again.controls] == [("a", 0.5, "none"), ("b", 1.0, "canny")]
    assert again.controls[1].image.mode == "RGBA" and again.controls[1].image.tobytes() == translucent.tobytes()
    assert again.hires == hires and again.outpaint == (1, 2, 3, 4)
    (prompt,) = again.image_prompts
    assert (prompt.model, prompt.scale, [image.size for image in prompt.images]) == ("ip", 0.5, [(64, 64), (8, 8)])


def test_other_scripts_and_bad_native_units_are_refused(server):
    other = requests.post(
        f"{server.url}/sdapi/v1/txt2img", json={**A1111, "alwayson_scripts": {"ADetailer": {"args": [True]}}}
    )
    assert_field(other, "alwayson_scripts.ADetailer", "ADetailer")
    unknown = requests.post(
        f"{server.url}/v2/jobs", json={**NATIVE, "controls": [{"model": "/etc/passwd", "image": b64(square())}]}
    )
    assert_field(unknown, "controls.0.model", "passwd", CONTROLNET)  # paths in texts show as file names
    for module in ("depth", "depth_zoe"):
        depth = {"model": CONTROLNET, "image": b64(square()), "preprocessor": module}
        assert_field(
            requests.post(f"{server.url}/v2/jobs", json={**NATIVE, "controls": [depth]}),
            "controls.0.preprocessor",
            "send a depth map with preprocessor none",
        )
    estimator = {**depth, "preprocessor_model": "/models/dpt"}  # clients never send paths
    assert_field(
        requests.post(f"{server.url}/v2/jobs", json={**NATIVE, "controls": [estimator]}),
        "controls.0.preprocessor_model",
    )


# ---------------------------------------------------------------------- IP-Adapters


def picture(seed: int = 3) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def test_ip_adapters_are_listed_by_name_and_pickles_are_never_read(server):
    facts = requests.get(f"{server.url}/v2/ip-adapters").json()
    assert [fact["name"] for fact in facts] == [IP_ADAPTER, IP_FOREIGN]  # pickled.bin is not offered
    assert facts[0]["file"] == f"{IP_ADAPTER}.safetensors" and (facts[0]["variant"], facts[0]["tokens"]) == ("plain", 4)
    listed = requests.get(f"{server.url}/controlnet/model_list").json()["model_list"]
    assert f"{IP_ADAPTER} [{facts[0]['hash']}]" in listed and listed[0].startswith(f"{FOREIGN} [")  # ControlNets first
    modules = requests.get(f"{server.url}/controlnet/module_list").json()
    assert "ip-adapter_clip_sdxl" in modules["module_list"] and modules["module_detail"]["ip-adapter_clip_sdxl"]
    labels = requests.get(f"{server.url}/controlnet/module_list", params={"alias_names": "true"}).json()
    assert "ip-adapter_clip_g" in labels["module_list"]


def test_image_prompt_on_the_jobs_api_and_as_an_a1111_unit(server):
    import webuiapi

    _, plain = job(server)
    prompt = {"model": IP_ADAPTER, "images": [b64(picture())], "scale": 1.0}
    done, prompted = job(server, image_prompts=[prompt])
    assert np.abs(pixels(prompted) - pixels(plain)).max() > 0  # the picture steered the image
    (stored,) = done["params"]["image_prompts"]
    assert stored == {"model": IP_ADAPTER, "scale": 1.0, "images": [f"{done['id']}-ip0-0.png"]}  # names, not paths
    again = requests.get(f"{server.url}/v2/files/{stored['images'][0]}")  # kept with the job: a restart finds it
    assert again.ok and pixels(Image.open(io.BytesIO(again.content))).tolist() == pixels(picture()).tolist()
    assert f'IP-Adapter 0: "Model: {IP_ADAPTER}, Weight: 1"' in done["images"][0]["infotext"]
    api = webui(server)
    listed = next(name for name in api.controlnet_model_list() if name.startswith(f"{IP_ADAPTER} ["))
    unit = webuiapi.ControlNetUnit(image=picture(), module="ip-adapter_clip_sdxl", model=listed)
    result = webui_txt2img(api, **A1111, controlnet_units=[unit])
    assert np.abs(pixels(result.image) - pixels(prompted)).max() <= 2  # the same image prompt


def test_control_and_image_prompt_from_the_page(browser, server):
    page = browser.new_page()
    page.goto(server.url)
    page.wait_for_selector(f"#ip-model option[value='{IP_ADAPTER}']", state="attached")
    assert page.locator("#control-preprocessor option[value='ip-adapter_clip_sdxl']").count() == 0  # not a map
    for section in ("#control-section", "#ip-section"):
        page.click(f"{section} summary")
    page.select_option("#control-model", CONTROLNET)
    page.select_option("#control-preprocessor", "canny")
    page.set_input_files(
        "#control-image", files=[{"name": "square.png", "mimeType": "image/png", "buffer": png(square())}]
    )
    page.locator("#control-scale").evaluate(
        "slider => { slider.value = '0.5'; slider.dispatchEvent(new Event('input')); }"
    )
    assert page.locator("#control-scale-value").inner_text() == "0.5"
    page.fill("#control-end", "0.8")
    page.select_option("#ip-model", IP_ADAPTER)
    page.set_input_files(
        "#ip-image", files=[{"name": "picture.png", "mimeType": "image/png", "buffer": png(picture())}]
    )
    image = generate_on_page(page, **{"#prompt": "a red circle", "#width": "64", "#height": "64", "#steps": "2"})
    assert image.size == (64, 64)
    params = requests.get(f"{server.url}/v2/jobs", params={"limit": 1}).json()[0]["params"]
    (unit,) = params["controls"]
    assert (unit["model"], unit["preprocessor"], unit["scale"], unit["end"]) == (CONTROLNET, "canny", 0.5, 0.8)
    (prompt,) = params["image_prompts"]
    assert (prompt["model"], prompt["scale"], len(prompt["images"])) == (IP_ADAPTER, 1.0, 1)


@pytest.mark.parametrize(
    ("prompt", "field", "words"),
    [
        ({"model": "../ip-adapters/ip-adapter-random"}, "model", ("unknown IP-Adapter", IP_ADAPTER)),
        ({"model": "pickled"}, "model", ("pickled",)),
        ({"images": []}, "images", ("1 to 4",)),
        ({"images": [b64(square())] * 5}, "images", ("at most 4",)),
        ({"images": ["not base64!"]}, "images.0", ("base64",)),
        ({"scale": 3}, "scale", ("2",)),
    ],
)
def test_bad_native_image_prompts_are_a_422_naming_the_field(server, prompt, field, words):
    prompt = {"model": IP_ADAPTER, "images": [b64(square())], **prompt}
    response = requests.post(f"{server.url}/v2/jobs", json={**NATIVE, "image_prompts": [prompt]})
    assert_field(response, f"image_prompts.0.{field}", *words)


@pytest.mark.parametrize(
    ("unit", "field", "word"),
    [
        ({"model": "nope [12345678]"}, "model", "unknown IP-Adapter"),
        ({"module": "ip-adapter_face_id"}, "module", "FaceID"),
        ({"guidance_end": 0.5}, "guidance_end", "every step"),
        ({"image": ""}, "image", "image"),
    ],
)
def test_bad_a1111_ip_adapter_units_are_a_422_naming_the_field(server, unit, field, word):
    unit = {"model": IP_ADAPTER, "module": "ip-adapter_clip_sdxl", "image": b64(picture()), **unit}
    response = requests.post(
        f"{server.url}/sdapi/v1/txt2img", json={**A1111, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert_field(response, f"alwayson_scripts.controlnet.args.0.{field}", word)


def test_an_ip_adapter_for_another_architecture_fails_its_own_request_only(server):
    unit = {"model": IP_FOREIGN, "module": "ip-adapter_clip_sdxl", "image": b64(picture())}
    response = requests.post(
        f"{server.url}/sdapi/v1/txt2img", json={**A1111, "alwayson_scripts": {"controlnet": {"args": [unit]}}}
    )
    assert response.status_code == 400 and "another model family" in response.json()["detail"], response.text


# ---------------------------------------------------------------------- hires fix and outpainting


def test_enable_hr_doubles_the_size_with_a_latent_or_a_model_upscaler(server):
    hires = {"enable_hr": True, "hr_scale": 2, "denoising_strength": 0.6, "hr_second_pass_steps": 2}
    assert txt2img(server, **hires, hr_upscaler="Latent").size == (128, 128)
    assert txt2img(server, **hires, hr_upscaler=UPSCALER, hr_resize_x=96).size == (96, 96)  # one side: aspect kept
    unknown = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**A1111, **hires, "hr_upscaler": "R-ESRGAN 4x+"})
    assert_field(unknown, "hr_upscaler", "R-ESRGAN 4x+", UPSCALER)
    sampler = requests.post(f"{server.url}/sdapi/v1/txt2img", json={**A1111, **hires, "hr_sampler_name": "DPM++ 2M"})
    assert_field(sampler, "hr_sampler_name")
    _, native = job(server, hires={"scale": 1.5, "upscaler": "Lanczos", "strength": 0.5})
    assert native.size == (96, 96)


def test_a_hires_pass_over_the_servers_sides_is_refused_even_from_the_models_default_size(server):
    hires = {"scale": 4, "upscaler": "Latent"}
    given = requests.post(f"{server.url}/v2/jobs", json={**NATIVE, "width": 1024, "height": 1024, "hires": hires})
    assert_field(given, "hires", "4096x4096", "2048")
    sizeless = {k: v for k, v in NATIVE.items() if k not in ("width", "height")}
    response = requests.post(f"{server.url}/v2/jobs", json={**sizeless, "model": BIG_DEFAULT, "hires": hires})
    assert response.status_code == 202, response.text  # the default size is the model's: known once it is loaded
    (done,) = wait_for_jobs(server.url, [response.json()["id"]], timeout=120)
    assert done["status"] == "failed" and "3072x3072" in done["error"] and "2048" in done["error"], done
    assert "internal" not in done["error"]  # the request's fault, not the server's
    _, small = job(server, **sizeless, hires={**hires, "upscaler": "Lanczos"})  # 64x64 by default: 256x256
    assert small.size == (256, 256)


def test_outpaint_grows_the_canvas_and_keeps_every_original_pixel(server):
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    fields = {k: v for k, v in NATIVE.items() if k not in ("width", "height")}
    response = requests.post(
        f"{server.url}/v2/jobs", json={**fields, "init_image": b64(original), "outpaint": {"right": 32, "top": 16}}
    )
    assert response.status_code == 202, response.text
    (done,) = wait_for_jobs(server.url, [response.json()["id"]], timeout=120)
    grown = Image.open(io.BytesIO(requests.get(done["images"][0]["url"]).content))
    assert grown.size == (96, 80)
    assert pixels(grown)[16:, :64].tolist() == pixels(original).tolist()
    with_mask = {**NATIVE, "init_image": b64(original), "mask_image": b64(square()), "outpaint": {"left": 8}}
    assert_field(requests.post(f"{server.url}/v2/jobs", json=with_mask), "outpaint", "mask")


# ---------------------------------------------------------------------- sd-webui-controlnet's routes


def test_controlnet_lists_version_and_settings(server):
    listed = requests.get(f"{server.url}/controlnet/model_list").json()["model_list"]
    builtin = "shapes-layout"  # the built-in model's ControlNet is always offered, as the built-in LoRAs are
    assert [name.split(" [")[0] for name in listed] == [FOREIGN, builtin, CONTROLNET, IP_ADAPTER, IP_FOREIGN]
    assert listed[2].endswith("]")
    modules = requests.get(f"{server.url}/controlnet/module_list", params={"alias_names": "false"}).json()
    assert "canny" in modules["module_list"] and modules["module_detail"]["canny"]["sliders"]
    labels = requests.get(f"{server.url}/controlnet/module_list", params={"alias_names": "true"}).json()
    for listed in (modules, labels):  # depth needs a local estimator folder: requests cannot name one here
        assert not [name for name in [*listed["module_list"], *listed["module_detail"]] if "depth" in name], listed
    assert requests.get(f"{server.url}/controlnet/version").json() == {"version": 2}
    assert requests.get(f"{server.url}/controlnet/settings").json() == {"control_net_unit_count": 4}
    facts = requests.get(f"{server.url}/v2/controlnets").json()[2]  # after the foreign one and the built-in one
    assert facts["name"] == CONTROLNET and facts["file"] == CONTROLNET and facts["kind"] == "ControlNetModel"


def test_detect_canny_draws_the_square_edges(server):
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64(square())], "controlnet_processor_res": 64}
    answer = requests.post(f"{server.url}/controlnet/detect", json=body).json()
    assert answer["info"] == "Success"
    edges = pixels(unb64(answer["images"][0]))[..., 0]
    assert edges.shape == (64, 64) and edges[32, 32] == 0 and edges[:8, :8].max() == 0  # inside and outside: none
    assert edges[14:19, 32].max() == 255 and edges[32, 45:50].max() == 255  # on the square's border
    bad = requests.post(f"{server.url}/controlnet/detect", json={**body, "controlnet_module": "openpose"})
    assert_field(bad, "controlnet_module", "openpose")
    depth = requests.post(f"{server.url}/controlnet/detect", json={**body, "controlnet_module": "depth_anything"})
    assert_field(depth, "controlnet_module", "send a depth map with module none")


def test_a_broken_control_model_is_listed_without_the_servers_path(server, tool_dirs):
    broken = tool_dirs[0] / "bad"
    broken.mkdir()
    try:
        (broken / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
        response = requests.get(f"{server.url}/v2/controlnets")
        assert response.status_code == 200, response.text
        (fact,) = [fact for fact in response.json() if fact["name"] == "bad"]
        assert "UNet2DConditionModel" in fact["error"], fact
        assert str(tool_dirs[0]) not in response.text and str(tool_dirs[0].parent) not in response.text
        assert "/tmp" not in response.text and str(broken.resolve()) not in response.text, response.text
        listed = requests.get(f"{server.url}/controlnet/model_list").json()["model_list"]
        assert not [name for name in listed if name.startswith("bad ")]  # only usable models are offered
    finally:
        (broken / "config.json").unlink()
        broken.rmdir()


# ---------------------------------------------------------------------- upscalers


def test_upscaler_lists_name_files_not_paths(server):
    records = {r["name"]: r for r in requests.get(f"{server.url}/sdapi/v1/upscalers").json()}
    assert {"None", "Lanczos", "Nearest", UPSCALER} <= set(records)
    assert records[UPSCALER]["model_path"] == f"{UPSCALER}.safetensors" and records[UPSCALER]["scale"] == 4
    modes = [m["name"] for m in requests.get(f"{server.url}/sdapi/v1/latent-upscale-modes").json()]
    assert "Latent" in modes and "Latent (nearest-exact)" in modes
    native = requests.get(f"{server.url}/v2/upscalers").json()
    assert native["latent_modes"] == modes and [r["name"] for r in native["upscalers"]] == list(records)


def test_extra_single_image_upscales_with_the_model_and_refuses_too_large(server):
    url = f"{server.url}/sdapi/v1/extra-single-image"
    body = {"image": b64(square()), "upscaler_1": UPSCALER, "upscaling_resize": 4}
    answer = requests.post(url, json=body)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"html_info", "image"} and unb64(answer.json()["image"]).size == (256, 256)
    to_size = {**body, "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60}
    assert unb64(requests.post(url, json=to_size).json()["image"]).size == (100, 60)
    strip = {**body, "image": b64(Image.new("RGB", (4096, 8)))}
    assert_field(requests.post(url, json=strip), "upscaling_resize", "8192")
    assert_field(requests.post(url, json={**body, "upscaler_1": "/etc/passwd"}), "upscaler_1", UPSCALER)
    assert_field(requests.post(url, json={**body, "gfpgan_visibility": 0.5}), "gfpgan_visibility")
