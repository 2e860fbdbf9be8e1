"""Segmind's async API: ``POST /v2/{model}`` queues a job at once and ``GET /v2/requests/{id}/status`` follows it; the
same checks as ``/v1/{model}`` when it arrives, requests private to their key as native jobs are, and model names the
native ``/v2`` routes own refused at start-up."""

import base64
import io

import pytest
import requests
from PIL import Image
from serverkit import MODEL, start_keyed_server, wait_until

from ssdxl.errors import UserError
from ssdxl.server.config import ServerConfig

TINY = {"prompt": "a red circle", "img_width": 64, "img_height": 64, "num_inference_steps": 2}
FINAL = ("COMPLETED", "FAILED")


def status_url(server, request_id: str) -> str:
    return f"{server.url}/v2/requests/{request_id}/status"


def queue(server, body: dict, headers=None, model: str = MODEL) -> dict:
    response = requests.post(f"{server.url}/v2/{model}", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def poll(url: str, statuses=FINAL, headers=None) -> dict:
    def reached():
        answer = requests.get(url, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json() if answer.json()["status"] in statuses else None

    return wait_until(reached, 120, f"{url} to reach {' or '.join(statuses)}", interval=0.2)


def job_count(server) -> int:
    return server.store.db.connection().execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def test_submit_then_poll_until_completed(server):
    queued = queue(server, {**TINY, "seed": 7, "samples": 2, "base64": True})
    request_id = queued["request_id"]
    assert queued["status"] == "QUEUED"
    assert queued["poll_url"] == queued["status_url"] == f"{status_url(server, request_id)}?base64=true"
    done = poll(queued["poll_url"])
    assert done["status"] == "COMPLETED" and done["request_id"] == request_id and done["seeds"] == [7, 8], done
    assert Image.open(io.BytesIO(base64.b64decode(done["image"]))).size == (64, 64)  # the first, as /v1 gives it
    linked = [Image.open(io.BytesIO(requests.get(url, timeout=60).content)) for url in done["images"]]
    assert [image.size for image in linked] == [(64, 64), (64, 64)]
    plain = requests.get(status_url(server, request_id), timeout=60).json()  # no base64 asked: links only
    assert "image" not in plain and len(plain["images"]) == 2 and "error" not in plain
    native = requests.get(f"{server.url}/v2/jobs/{request_id}", timeout=60).json()  # one queue for every API
    assert native["status"] == "succeeded" and native["model"] == MODEL and native["params"]["steps"] == 2


def test_the_full_result_adds_what_the_job_recorded(server):
    request_id = queue(server, {**TINY, "seed": 11, "negative_prompt": "blue"})["request_id"]
    done = poll(status_url(server, request_id))
    full = requests.get(f"{server.url}/v2/requests/{request_id}", timeout=60)
    assert full.status_code == 200, full.text
    result = full.json()
    assert result["status"] == "COMPLETED" and result["images"] == done["images"] and result["seeds"] == [11]
    assert result["model"] == MODEL and result["params"]["negative_prompt"] == "blue" and result["params"]["steps"] == 2
    assert "Seed: 11" in result["infotexts"][0]
    assert result["completed_at"] >= result["started_at"] >= result["created_at"]
    assert "image" not in result and set(result["timings"]) and "error" not in result
    assert requests.get(f"{server.url}/v2/requests/{'0' * 32}", timeout=60).status_code == 404


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        (MODEL, {"img_width": 65}, "img_width"),
        (MODEL, {"num_inference_steps": 151}, "num_inference_steps"),
        (MODEL, {"style": "no-such-style"}, "style"),
        (MODEL, {"loras": ["nope"]}, "loras"),
        ("no-such-model", {}, "model"),
    ],
)
def test_a_bad_field_is_refused_when_it_arrives_and_nothing_is_stored(server, model, fields, field):
    before = job_count(server)
    response = requests.post(f"{server.url}/v2/{model}", json={**TINY, **fields}, timeout=60)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field and body["error"]["param"] == field and field in body["error"]["message"], body
    assert job_count(server) == before


def test_a_retried_submit_with_an_idempotency_key_gets_its_first_request(server):
    headers = {"Idempotency-Key": "segmind-async-retry"}
    first = queue(server, {**TINY, "seed": 3}, headers=headers)
    before = job_count(server)
    assert queue(server, {**TINY, "seed": 3}, headers=headers)["request_id"] == first["request_id"]
    assert job_count(server) == before


def test_unknown_request_is_404(server):
    response = requests.get(status_url(server, "0" * 32), timeout=60)
    assert response.status_code == 404 and "error" in response.json()


def test_a_cancelled_request_is_failed(server):
    queued = queue(server, {**TINY, "num_inference_steps": 150})
    url = status_url(server, queued["request_id"])
    assert poll(url, ("PROCESSING", *FINAL))["status"] == "PROCESSING"
    assert requests.delete(f"{server.url}/v2/jobs/{queued['request_id']}", timeout=60).ok  # the native cancel
    failed = poll(url)
    assert failed["status"] == "FAILED" and "cancelled" in failed["error"] and "images" not in failed, failed


def test_native_routes_keep_their_paths(server):
    """``POST /v2/{model}`` is registered last: the native ``POST /v2/jobs`` still makes native jobs."""
    response = requests.post(f"{server.url}/v2/jobs", json={"prompt": "p", "width": 64, "height": 64, "steps": 1})
    assert response.status_code == 202 and "request_id" not in response.json(), response.text
    paths = requests.get(f"{server.url}/openapi.json", timeout=60).json()["paths"]
    assert {"/v2/{model}", "/v2/requests/{request_id}/status", "/v2/jobs"} <= set(paths)


@pytest.fixture(scope="module")
def keyed(tiny_dir, tmp_path_factory):
    handle, tokens, stop = start_keyed_server(tmp_path_factory.mktemp("segmind-keyed"), tiny_dir(MODEL))
    yield handle, tokens
    stop()


def test_only_the_key_that_made_a_request_reads_it(keyed):
    server, keys = keyed
    assert requests.post(f"{server.url}/v2/{MODEL}", json=TINY, timeout=60).status_code == 401
    queued = queue(server, TINY, headers=keys["alice"])
    url = status_url(server, queued["request_id"])
    assert requests.get(url, headers=keys["bob"], timeout=60).status_code == 404
    assert requests.get(url, timeout=60).status_code == 401
    assert poll(url, headers=keys["alice"])["status"] == "COMPLETED"
    assert requests.get(url, headers=keys["bob"], timeout=60).status_code == 404


def test_a_model_named_like_a_native_v2_route_is_refused_at_start_up(tiny_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ssdxl.cli.main import app
    from ssdxl.server.app import create_app

    with pytest.raises(UserError, match="--model jobs: .*reserved names: .*files.*requests"):
        create_app(ServerConfig(data_dir=tmp_path / "api", models={"jobs": str(tiny_dir(MODEL))}))
    assert not (tmp_path / "api").exists()  # refused before the data folder is touched

    def serving(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("uvicorn.run", serving)
    command = ["serve", "--model", f"models={tiny_dir(MODEL)}", "--data", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert line.startswith("error: --model models:") and "reserved names:" in line and "jobs" in line
