"""With keys configured: only /health answers without one; keys come the way each client sends them;
per-key rate limits (429), body size limit (413), jobs private to their key, signed links."""

import base64
import io

import pytest
import requests
from PIL import Image
from serverkit import MODEL, start_thread_server
from typer.testing import CliRunner

from ssdxl.server.auth import KeyStore
from ssdxl.server.config import ServerConfig
from ssdxl.server.storage import open_data

BODY_LIMIT = 100_000
TINY = {"prompt": "p", "width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def keyed(tiny_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("keyed")
    store, _ = open_data(ServerConfig(data_dir=data_dir))
    keys = KeyStore(store.db)
    tokens = {name: keys.add(name, rate)[1] for name, rate in (("alice", None), ("bob", None), ("slow", 2))}
    handle, stop = start_thread_server(data_dir, tiny_dir(MODEL), max_body_bytes=BODY_LIMIT)
    yield handle, tokens
    stop()


@pytest.mark.parametrize("path", ["/", "/docs", "/openapi.json", "/v2/models", "/sdapi/v1/sd-models", "/static/app.js"])
def test_nothing_but_health_answers_without_a_key(keyed, path):
    server, _ = keyed
    response = requests.get(f"{server.url}{path}")
    assert response.status_code == 401 and "API key" in response.json()["detail"]
    assert requests.get(f"{server.url}{path}", headers={"x-api-key": "sk-ssdxl-wrong"}).status_code == 401
    assert requests.get(f"{server.url}/health").status_code == 200


def test_each_client_sends_its_key_its_own_way(keyed):
    from openai import AuthenticationError, OpenAI

    server, tokens = keyed
    segmind = requests.post(f"{server.url}/v1/{MODEL}", json={"prompt": "p", "img_width": 64, "img_height": 64,
                            "num_inference_steps": 2}, headers={"x-api-key": tokens["alice"]})  # fmt: skip
    assert segmind.status_code == 200
    client = OpenAI(base_url=f"{server.url}/v1", api_key=tokens["alice"])
    result = client.images.generate(prompt="p", size="64x64", response_format="b64_json", extra_body={"steps": 2})
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (64, 64)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="wrong").images.generate(prompt="p")
    import webuiapi

    port = int(server.url.rsplit(":", 1)[1])
    api = webuiapi.WebUIApi(host="127.0.0.1", port=port, username="anyone", password=tokens["alice"])
    assert api.txt2img(prompt="p", width=64, height=64, steps=2).image.size == (64, 64)


def test_jobs_are_private_to_their_key_and_links_are_signed(keyed):
    server, tokens = keyed
    alice, bob = ({"x-api-key": tokens[n]} for n in ("alice", "bob"))
    job = requests.post(f"{server.url}/v2/jobs", json=TINY, headers=alice).json()
    assert requests.get(f"{server.url}/v2/jobs/{job['id']}", headers=bob).status_code == 404
    assert requests.delete(f"{server.url}/v2/jobs/{job['id']}", headers=bob).status_code == 404
    assert job["id"] not in [j["id"] for j in requests.get(f"{server.url}/v2/jobs", headers=bob).json()]
    from serverkit import wait_for_jobs

    (done,) = wait_for_jobs(server.url, [job["id"]], timeout=60, headers=alice)
    link = done["images"][0]["url"]
    assert requests.get(link).ok  # a signed link needs no key
    assert requests.get(link.replace("signature=", "signature=0")).status_code == 403  # a forged link
    assert requests.get(link.split("?")[0], headers=alice).ok
    assert requests.get(link.split("?")[0], headers=bob).status_code == 404


def test_rate_limit_per_key(keyed):
    server, tokens = keyed
    slow = {"x-api-key": tokens["slow"]}
    codes = [requests.post(f"{server.url}/v2/jobs", json=TINY, headers=slow).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    limited = requests.post(f"{server.url}/v2/jobs", json=TINY, headers=slow)
    assert int(limited.headers["retry-after"]) >= 1 and "slow" in limited.json()["detail"]
    assert requests.post(f"{server.url}/v2/jobs", json=TINY, headers={"x-api-key": tokens["bob"]}).status_code == 202


def test_large_bodies_are_refused(keyed):
    server, tokens = keyed
    big = {**TINY, "init_image": "A" * (BODY_LIMIT + 1)}
    response = requests.post(f"{server.url}/v2/jobs", json=big, headers={"x-api-key": tokens["alice"]})
    assert response.status_code == 413

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(BODY_LIMIT // 10_000 + 1):
            yield b"x" * 10_000
        yield b'"}'

    headers = {"x-api-key": tokens["alice"], "content-type": "application/json"}
    assert requests.post(f"{server.url}/v2/jobs", data=chunks(), headers=headers).status_code == 413


def test_keys_cli(tmp_path):
    from ssdxl.cli.main import app

    cli = CliRunner()
    added = cli.invoke(app, ["keys", "add", "--name", "ci", "--rate", "30/min", "--data", str(tmp_path)])
    assert added.exit_code == 0
    token = added.stdout.strip().splitlines()[0]
    assert token.startswith("sk-ssdxl-")
    listed = cli.invoke(app, ["keys", "list", "--data", str(tmp_path)])
    assert "ci" in listed.stdout and "30/min" in listed.stdout and token not in listed.stdout
    assert cli.invoke(app, ["keys", "add", "--rate", "fast", "--data", str(tmp_path)]).exit_code == 2
    assert cli.invoke(app, ["keys", "remove", "ci", "--data", str(tmp_path)]).exit_code == 0
    assert cli.invoke(app, ["keys", "remove", "ci", "--data", str(tmp_path)]).exit_code == 2
