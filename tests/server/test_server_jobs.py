"""The asynchronous jobs API: submit, status, progress events with previews, cancel; docs and models."""

import base64
import io
import json

import requests
from PIL import Image
from serverkit import MODEL, wait_for_jobs, wait_until

from ssdxl.server import PREVIEW_EVERY


def submit(server, **fields):
    body = {"prompt": "a green star", "width": 64, "height": 64, **fields}
    response = requests.post(f"{server.url}/v2/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_submit_then_follow_to_the_result(server):
    job = submit(server, steps=2, seed=11, samples=2)
    assert job["status"] in ("queued", "running") and job["params"]["seed"] == 11
    (done,) = wait_for_jobs(server.url, [job["id"]], timeout=60)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["batch_size"] >= 2
    assert [i["seed"] for i in done["images"]] == [11, 12]
    image = Image.open(io.BytesIO(requests.get(done["images"][1]["url"]).content))
    assert image.size == (64, 64) and "Seed: 12" in image.info["parameters"]
    assert any(j["id"] == job["id"] for j in requests.get(f"{server.url}/v2/jobs").json())


def test_events_stream_progress_with_previews_until_done(server):
    job = submit(server, steps=9)  # previews at steps 4, 8 and 9 (PREVIEW_EVERY), progress at every step
    events = []
    with requests.get(f"{server.url}/v2/jobs/{job['id']}/events", stream=True, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    stepped = [data for name, data in events if name == "progress" and data["step"] > 0]
    assert stepped and all(data["status"] == "running" and data["total"] == 9 for data in stepped)
    assert all((data["preview"] is not None) == (data["step"] >= PREVIEW_EVERY) for data in stepped)
    preview = Image.open(io.BytesIO(base64.b64decode(stepped[-1]["preview"].split(",", 1)[1])))
    assert preview.size == (8, 8)  # latent-sized: no VAE involved


def test_cancel_stops_a_running_job_at_its_next_step(server):
    job = submit(server, steps=150)
    url = f"{server.url}/v2/jobs/{job['id']}"
    wait_until(lambda: requests.get(url).json()["step"] >= 1, 60, "the job to start stepping")
    assert requests.delete(url).json()["cancel_requested"]
    (done,) = wait_for_jobs(server.url, [job["id"]], timeout=30)
    assert done["status"] == "cancelled" and done["step"] < 150 and not done["images"]


def test_cancel_a_queued_job_and_unknown_jobs(server):
    blocker = submit(server, steps=150)
    queued = submit(server, steps=2, width=72)  # another size: never batched with the blocker
    assert requests.delete(f"{server.url}/v2/jobs/{queued['id']}").json()["status"] == "cancelled"
    requests.delete(f"{server.url}/v2/jobs/{blocker['id']}")
    assert requests.get(f"{server.url}/v2/jobs/nope").status_code == 404
    assert requests.get(f"{server.url}/v2/files/{queued['id']}-a1-0.png").status_code == 404


def test_models_health_docs_and_page(server):
    models = requests.get(f"{server.url}/v2/models").json()
    assert MODEL in models["models"] and models["default"] == MODEL and "Euler a" in models["schedulers"]
    assert requests.get(f"{server.url}/health").json() == {"status": "ok"}
    assert requests.get(f"{server.url}/docs").ok
    paths = requests.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/{model}", "/sdapi/v1/txt2img", "/v1/images/generations", "/v2/jobs"} <= set(paths)
    page = requests.get(server.url)
    assert page.headers["content-type"].startswith("text/html") and 'id="prompt"' in page.text
    assert requests.get(f"{server.url}/static/app.js").ok
    assert requests.get(f"{server.url}/static/x.js").status_code == 404
