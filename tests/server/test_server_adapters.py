"""LoRAs and embeddings over HTTP: the lists, names checked at accept time (never paths), the same image
whichever way a LoRA is asked for, no LoRA leaking between jobs, and Segmind's Vega RT endpoint."""

import base64
import io
import json
import uuid
from contextlib import contextmanager

import numpy as np
import pytest
import requests
from PIL import Image
from serverkit import MODEL, start_thread_server, wait_for_jobs, wait_until

from ssdxl.adapters.synthetic import make_embedding, make_lora
from ssdxl.errors import UserError
from ssdxl.models.loading import load_components

TINY = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 5.0}
VEGA_RT = "segmind-vega-rt-v1"


def submit(url, **fields):
    response = requests.post(f"{url}/v2/jobs", json={"prompt": "a red circle", **TINY, **fields})
    assert response.status_code == 202, response.text
    return response.json()


def run_job(url, **fields):
    (done,) = wait_for_jobs(url, [submit(url, **fields)["id"]], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    return done


def pixels(job_or_image):
    if isinstance(job_or_image, dict):
        job_or_image = Image.open(io.BytesIO(requests.get(job_or_image["images"][0]["url"]).content))
    return np.asarray(job_or_image.convert("RGB"), dtype=np.int16)


def decoded(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@contextmanager
def queued_together(url):
    """Jobs submitted in the block wait behind a long job, then run together once it is cancelled."""
    blocker = submit(url, steps=150, width=72, height=72)
    blocker_url = f"{url}/v2/jobs/{blocker['id']}"
    wait_until(lambda: requests.get(blocker_url).json()["step"] >= 1, 60, "the blocking job to start")
    yield
    assert requests.delete(blocker_url).json()["status"] in ("running", "cancelled"), "the blocker finished first"


def assert_refused(response, field, *words):
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["field"] == field and error["error"]["param"] == field, error
    for word in words:
        assert word in error["error"]["message"], error  # detail is FastAPI's list of {loc, msg, type}


# ---------------------------------------------------------------------- lists


def test_a1111_and_native_lists(server, adapter_dirs):
    loras = requests.get(f"{server.url}/sdapi/v1/loras").json()
    by_name = {entry["name"]: entry for entry in loras}
    assert {"style", "other", "made_for_refiner"} <= set(by_name)
    style = by_name["style"]
    assert style["alias"] == "style" and style["path"] == "style.safetensors"  # the file name, never a path
    assert style["metadata"]["format"] == "diffusers" and style["metadata"]["rank"] == 4
    assert by_name["other"]["metadata"]["format"] == "kohya"
    assert str(adapter_dirs[0]) not in json.dumps(loras)
    native = {entry["name"]: entry for entry in requests.get(f"{server.url}/v2/loras").json()}
    assert native["style"]["file"] == "style.safetensors" and "path" not in native["style"]
    assert native["style"]["hash"] == style["metadata"]["hash"] and native["style"]["parts"][0] == "unet"

    embeddings = requests.get(f"{server.url}/sdapi/v1/embeddings").json()
    assert set(embeddings) == {"loaded", "skipped"}
    listed = {e["name"]: e for e in requests.get(f"{server.url}/v2/embeddings").json()}
    mytok = embeddings["loaded"]["mytok"]
    assert mytok["vectors"] == 2 == listed["mytok"]["vectors"]
    assert mytok["shape"] == sum(listed["mytok"]["widths"].values())
    assert mytok["step"] is None and mytok["sd_checkpoint"] is None
    assert listed["mytok"]["file"] == "mytok.safetensors"


# ---------------------------------------------------------------------- one image, whichever API asks


def test_prompt_tag_and_loras_field_make_the_same_image(server, adapter_dirs):
    a1111 = requests.post(
        f"{server.url}/sdapi/v1/txt2img",
        json={"prompt": "a blue square <lora:style:0.8>", "seed": 21, "cfg_scale": 5.0, **TINY},
    ).json()
    tagged = decoded(a1111["images"][0])
    info = json.loads(a1111["info"])["infotexts"][0]
    assert info.startswith("a blue square <lora:style:0.8>\n") and "Lora hashes" in info
    stored = json.loads(tagged.info["ssdxl"])  # the PNG's parameters name the LoRA, not the server's file
    assert stored["loras"] == [["style", 0.8]] and str(adapter_dirs[0]) not in tagged.info["ssdxl"]

    native = run_job(server.url, prompt="a blue square", seed=21, loras=[{"name": "style", "weight": 0.8}])
    assert native["params"]["prompt"] == "a blue square" and native["params"]["loras"] == [["style", 0.8]]
    assert np.array_equal(pixels(native), pixels(tagged))

    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    extra = {"seed": 21, "steps": 2, "guidance_scale": 5.0, "loras": [["style", 0.8]]}
    result = client.images.generate(
        model=MODEL, prompt="a blue square", size="64x64", response_format="b64_json", extra_body=extra
    )
    assert np.array_equal(pixels(decoded(result.data[0].b64_json)), pixels(tagged))

    segmind = {"prompt": "a blue square", "seed": 21, "num_inference_steps": 2, "guidance_scale": 5, "img_width": 64,
               "img_height": 64, "loras": [{"name": "style.safetensors", "weight": "0.8"}]}  # fmt: skip
    jpeg = requests.post(f"{server.url}/v1/{MODEL}", json=segmind)
    assert jpeg.status_code == 200, jpeg.text
    plain = requests.post(f"{server.url}/v1/{MODEL}", json={**segmind, "loras": []})
    assert jpeg.content != plain.content  # the LoRA changes the picture
    reencoded = io.BytesIO()
    tagged.convert("RGB").save(reencoded, format="JPEG", quality=95)
    assert jpeg.content == reencoded.getvalue()


def test_concurrent_jobs_with_different_loras_equal_their_solo_runs(server):
    variants = {
        "style": [{"name": "style", "weight": 0.8}],
        "other": [{"name": "other", "weight": 1.2}],
        "both": [{"name": "other", "weight": -0.5}, {"name": "style", "weight": 0.6}],
        "none": [],
    }
    solo = {key: pixels(run_job(server.url, seed=31, loras=loras)) for key, loras in variants.items()}
    for key in ("style", "other", "both"):
        assert not np.array_equal(solo[key], solo["none"]), key
    with queued_together(server.url):
        ids = {key: submit(server.url, seed=31, loras=loras)["id"] for key, loras in variants.items()}
    jobs = dict(zip(ids, wait_for_jobs(server.url, list(ids.values()), timeout=120), strict=True))
    for key, job in jobs.items():
        assert job["status"] == "succeeded" and job["batch_size"] == 1, (key, job["error"])  # never batched together
        assert np.array_equal(pixels(job), solo[key]), key  # nothing left over from another job's LoRAs


def test_jobs_with_equal_loras_share_a_batch(server):
    with queued_together(server.url):
        ids = [submit(server.url, seed=s, loras=[["style", 0.8]])["id"] for s in (41, 42)]
    jobs = wait_for_jobs(server.url, ids, timeout=120)
    assert [j["status"] for j in jobs] == ["succeeded"] * 2 and [j["batch_size"] for j in jobs] == [2, 2]


# ---------------------------------------------------------------------- refused at accept time


@pytest.mark.parametrize(
    ("path", "body", "field", "words"),
    [
        ("/v2/jobs", {"loras": [{"name": "nope", "weight": 1}]}, "loras", ("unknown LoRA 'nope'", "style")),
        ("/v2/jobs", {"loras": [["style", 11]]}, "loras", ("outside -10..10",)),
        ("/v2/jobs", {"loras": [["style", "lots"]]}, "loras", ("not a number",)),
        ("/v2/jobs", {"loras": [{"name": "style", "scale": 1}]}, "loras", ("scale",)),
        ("/v2/jobs", {"prompt": "p <lora:nope:1>"}, "prompt", ("unknown LoRA 'nope'",)),
        ("/v2/jobs", {"prompt": "p <lora:style:-20>"}, "prompt", ("outside",)),
        ("/v2/jobs", {"prompt_syntax": "midjourney"}, "prompt_syntax", ()),
        ("/sdapi/v1/txt2img", {"prompt": "a cat <lora:nope:0.5>"}, "prompt", ("unknown LoRA", "other", "style")),
        ("/sdapi/v1/txt2img", {"prompt": "a cat <lora:style:x>"}, "prompt", ("not a number",)),
        (f"/v1/{MODEL}", {"loras": ["nope"]}, "loras", ("unknown LoRA",)),
        ("/v1/images/generations", {"loras": [["nope", 1]]}, "loras", ("unknown LoRA",)),
    ],
)
def test_bad_loras_are_refused_naming_the_field(server, path, body, field, words):
    response = requests.post(f"{server.url}{path}", json={"prompt": "p", **TINY, **body})
    assert_refused(response, field, *words)


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "/etc/passwd", "..\\..\\style", "loras/style.safetensors", "{outside}", "{nested}"]
)
def test_a_client_path_never_becomes_a_file(server, adapter_dirs, tmp_path, tiny_dir, name):
    outside = tmp_path / "outside.safetensors"  # a valid LoRA file, just not in a LoRA folder
    make_lora(load_components(tiny_dir(MODEL)), outside)
    # {nested}: a tag that only forms once the inner one is taken out of the prompt
    name = name.format(outside=outside, nested=f"style:1><lor<lora:style:1>a:{outside}")
    newest = server.store.recent(None, 1)
    for path, body, field in (
        ("/v2/jobs", {"loras": [[name, 1]]}, "loras"),
        ("/sdapi/v1/txt2img", {"prompt": f"a cat <lora:{name}:1>"}, "prompt"),
    ):
        response = requests.post(f"{server.url}{path}", json={"prompt": "p", **TINY, **body})
        assert_refused(response, field, "unknown LoRA")
        assert str(adapter_dirs[0]) not in response.text
    assert [j.id for j in server.store.recent(None, 1)] == [j.id for j in newest]  # nothing was queued


def test_a_malformed_prompt_weight_is_refused_and_fails_no_other_job(server):
    with queued_together(server.url):
        good = submit(server.url, prompt="(a cat:1.3) on a mat", seed=51)
        bad = requests.post(f"{server.url}/v2/jobs", json={"prompt": "(cat:.)", **TINY})
        assert_refused(bad, "prompt")
        negative = requests.post(f"{server.url}/v2/jobs", json={"prompt": "a cat", "negative_prompt": "(cat:.)"})
        assert_refused(negative, "negative_prompt")
        a1111 = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "(cat:.)", **TINY})
        assert_refused(a1111, "prompt")
        compel = submit(server.url, prompt="a cat++ on a mat", prompt_syntax="compel", seed=52)
    jobs = wait_for_jobs(server.url, [good["id"], compel["id"]], timeout=120)
    assert [j["status"] for j in jobs] == ["succeeded"] * 2
    assert jobs[1]["params"]["prompt_syntax"] == "compel"


# ---------------------------------------------------------------------- refresh, and files the model cannot use


def test_refresh_picks_up_new_files(server, adapter_dirs, tiny_dir):
    server.app.state.service.registry.engine(MODEL)  # loaded before the new files exist
    loras, embeddings = adapter_dirs
    lora, token = f"fresh{uuid.uuid4().hex[:6]}", f"newtok{uuid.uuid4().hex[:6]}"
    vega = load_components(tiny_dir(MODEL))
    make_lora(vega, loras / f"{lora}.safetensors", seed=11)
    make_embedding(vega, embeddings / f"{token}.safetensors", seed=12)
    assert lora not in [e["name"] for e in requests.get(f"{server.url}/sdapi/v1/loras").json()]
    refused = requests.post(f"{server.url}/v2/jobs", json={"prompt": "p", **TINY, "loras": [[lora, 1]]})
    assert_refused(refused, "loras", "unknown LoRA")
    # as when another process's server was refreshed: this index knows the file, the runner's engine not yet
    server.app.state.service.registry.adapters.refresh()
    assert f"<lora:{lora}:1>" in run_job(server.url, loras=[[lora, 1]], seed=2)["images"][0]["infotext"]
    assert requests.post(f"{server.url}/sdapi/v1/refresh-loras").status_code == 200
    assert requests.post(f"{server.url}/sdapi/v1/refresh-embeddings").status_code == 200
    assert lora in [e["name"] for e in requests.get(f"{server.url}/sdapi/v1/loras").json()]
    assert token in requests.get(f"{server.url}/sdapi/v1/embeddings").json()["loaded"]
    done = run_job(server.url, prompt=f"a photo of {token}", loras=[[lora, 0.5]], seed=3)
    assert done["params"]["loras"] == [[lora, 0.5]] and done["params"]["embeddings"] == [token]
    assert f"<lora:{lora}:0.5>" in done["images"][0]["infotext"] and "TI hashes" in done["images"][0]["infotext"]


def test_adapters_the_model_cannot_use_fail_their_own_job_only(server):
    with queued_together(server.url):
        wrong_lora = submit(server.url, loras=[["made_for_refiner", 1.0]], seed=61)
        wrong_width = submit(server.url, prompt="a photo of sd1tok", seed=62)
        good = submit(server.url, prompt="a photo of mytok", seed=63)
    jobs = wait_for_jobs(server.url, [wrong_lora["id"], wrong_width["id"], good["id"]], timeout=120)
    assert [j["status"] for j in jobs] == ["failed", "failed", "succeeded"], [j["error"] for j in jobs]
    assert "made_for_refiner" in jobs[0]["error"] and "sd1tok" in jobs[1]["error"]
    assert jobs[2]["params"]["embeddings"] == ["mytok"]
    assert "TI hashes" in jobs[2]["images"][0]["infotext"] and "mytok: " in jobs[2]["images"][0]["infotext"]
    # through a synchronous API the same failure is the request's 400
    answer = requests.post(f"{server.url}/sdapi/v1/txt2img", json={"prompt": "x <lora:made_for_refiner:1>", **TINY})
    assert answer.status_code == 400 and "made_for_refiner" in answer.json()["detail"]


# ---------------------------------------------------------------------- Segmind's Vega RT


@pytest.fixture(scope="module")
def rt_server(tiny_dir, tmp_path_factory):
    """Vega twice: as MODEL, and as segmind-vega-rt-v1 with an LCM LoRA bound to that name."""
    root = tmp_path_factory.mktemp("vega-rt")
    lcm = make_lora(load_components(tiny_dir(MODEL)), root / "VegaRT.safetensors", seed=9, scale=0.05)
    handle, stop = start_thread_server(
        root / "data",
        tiny_dir(MODEL),
        models={VEGA_RT: str(tiny_dir(MODEL))},
        model_loras={VEGA_RT: [(str(lcm), 1.0)]},
    )
    yield handle
    stop()


def test_vega_rt_endpoint_runs_the_bound_lcm_lora_in_4_steps(rt_server, server):
    body = {"prompt": "a lighthouse at dusk", "seed": 5, "img_width": 64, "img_height": 64, "base64": True}
    answer = requests.post(f"{rt_server.url}/v1/{VEGA_RT}", json=body)
    assert answer.status_code == 200, answer.text
    assert decoded(answer.json()["image"]).format == "JPEG" and answer.headers["x-seed"] == "5"
    (job,) = rt_server.store.recent(None, 1)
    assert job.model == VEGA_RT and job.request["steps"] == 4 and job.request["loras"] == []
    infotext = job.result["images"][0]["infotext"]
    assert "<lora:VegaRT:1>" in infotext and "Steps: 4," in infotext and "Sampler: LCM," in infotext
    assert "CFG scale: 1," in infotext and "Lora hashes" in infotext
    raw = requests.post(f"{rt_server.url}/v1/{VEGA_RT}", json={**body, "base64": False, "num_inference_steps": 6})
    assert raw.headers["content-type"] == "image/jpeg" and rt_server.store.recent(None, 1)[0].request["steps"] == 6
    too_few = requests.post(f"{rt_server.url}/v1/{VEGA_RT}", json={**body, "num_inference_steps": 2})
    assert_refused(too_few, "num_inference_steps")

    # the name gets the LoRA and its LCM defaults through any API; the plain name shares the engine, not the LoRA
    rt_job = run_job(rt_server.url, model=VEGA_RT, steps=None, guidance_scale=None, seed=7)
    assert "Steps: 4," in rt_job["images"][0]["infotext"] and "CFG scale: 1," in rt_job["images"][0]["infotext"]
    registry = rt_server.app.state.service.registry
    assert registry.engine(MODEL) is registry.engine(VEGA_RT)
    plain = run_job(rt_server.url, model=MODEL, seed=7)
    assert "<lora:" not in plain["images"][0]["infotext"]
    assert np.array_equal(pixels(plain), pixels(run_job(server.url, model=MODEL, seed=7)))


def test_vega_rt_endpoint_is_404_where_not_served(server):
    response = requests.post(f"{server.url}/v1/{VEGA_RT}", json={"prompt": "p"})
    assert response.status_code == 404
    error = response.json()
    assert error["field"] == "model" and VEGA_RT in error["detail"] and MODEL in error["detail"]


# ---------------------------------------------------------------------- options


def test_model_lora_and_folder_options(tmp_path, tiny_dir):
    from ssdxl.cli.serve import _config
    from ssdxl.server.config import parse_model_loras
    from ssdxl.server.registry import ModelRegistry

    assert parse_model_loras(["rt=/l/VegaRT.safetensors:0.9", "rt=C:/x.safetensors", "b=./a:b"]) == {
        "rt": [("/l/VegaRT.safetensors", 0.9), ("C:/x.safetensors", 1.0)],
        "b": [("./a:b", 1.0)],
    }
    config = _config(tmp_path, [f"rt={tiny_dir(MODEL)}"], None, [tmp_path], [tmp_path], ["rt=./x.safetensors:2"])
    assert config.lora_dirs == [tmp_path] and config.model_loras == {"rt": [("./x.safetensors", 2.0)]}
    with pytest.raises(UserError, match="unknown model"):
        ModelRegistry({"a": "x"}, model_loras={"b": [("x.safetensors", 1.0)]})
    with pytest.raises(UserError, match="not found"):
        ModelRegistry({"a": "x"}, model_loras={"a": [(str(tmp_path / "missing.safetensors"), 1.0)]})
    with pytest.raises(UserError, match="does not exist"):
        ModelRegistry({"a": "x"}, lora_dirs=[tmp_path / "nowhere"])


# ---------------------------------------------------------------------- a long-lived server


def test_a_new_lora_still_loads_after_jobs_with_loras_and_embeddings(server, adapter_dirs, tiny_dir):
    """A server runs for days: after jobs that used a LoRA and an embedding, a LoRA not used before must load."""
    late = f"late{uuid.uuid4().hex[:6]}"
    make_lora(load_components(tiny_dir(MODEL)), adapter_dirs[0] / f"{late}.safetensors", seed=13)
    requests.post(f"{server.url}/sdapi/v1/refresh-loras")
    run_job(server.url, prompt="a photo of mytok", loras=[["style", 0.5]], seed=71)
    done = run_job(server.url, loras=[[late, 1.0]], seed=72)
    assert f"<lora:{late}:1>" in done["images"][0]["infotext"]
