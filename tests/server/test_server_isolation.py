"""One request can never fail another (issue 15): prompts of different lengths never share a UNet batch,
and a batch that fails anyway is run again one job at a time, so each job gets its own outcome."""

import io

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from serverkit import MODEL, wait_for_jobs, wait_until

from ssdxl.conditioning.prompt import CHUNK_TOKENS
from ssdxl.errors import UserError
from ssdxl.sampling.request import GenerationRequest

STEPS = 2
LONG = "red " * 80  # 80 tokens: two chunks
LONG_NEGATIVE = "dark " * 100


def submit(server, **fields):
    body = {"width": 64, "height": 64, "steps": STEPS, **fields}
    response = requests.post(f"{server.url}/v2/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def run_together(server, bodies: list[dict]) -> list[dict]:
    """Queue ``bodies`` while a blocker job (another size) runs, then cancel it: they are claimed together."""
    blocker = submit(server, prompt="blocker", steps=150, width=72)
    url = f"{server.url}/v2/jobs/{blocker['id']}"
    wait_until(lambda: requests.get(url).json()["status"] == "running", 60, "the blocker to start")
    ids = [submit(server, **body)["id"] for body in bodies]
    requests.delete(url)
    return wait_for_jobs(server.url, ids, timeout=120)


def image_of(job: dict) -> np.ndarray:
    (image,) = job["images"]
    return np.asarray(Image.open(io.BytesIO(requests.get(image["url"]).content)).convert("RGB"), dtype=np.int16)


def alone(engine, body: dict) -> np.ndarray:
    negative = body.get("negative_prompt", "")
    request = GenerationRequest(body["prompt"], negative, 64, 64, STEPS, seed=body["seed"])
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


@pytest.mark.parametrize(
    "bodies",
    [
        [  # the reproduction
            {"prompt": "a red circle", "seed": 1},
            {"prompt": "a blue square", "seed": 2},
            {"prompt": LONG, "seed": 3},
        ],
        [
            {"prompt": "a red circle", "negative_prompt": "blurry", "seed": 4},
            {"prompt": "a blue square", "negative_prompt": LONG_NEGATIVE, "seed": 5},
            {"prompt": "a green star", "seed": 6},
        ],
    ],
    ids=["long-prompt", "long-negative"],
)
def test_a_long_prompt_runs_beside_short_ones_and_fails_none(server, engine, bodies):
    jobs = run_together(server, bodies)
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, [job["error"] for job in jobs]
    long_one = next(i for i, body in enumerate(bodies) if len(body["prompt"] + body.get("negative_prompt", "")) > 300)
    # the two one-chunk jobs shared a UNet batch; the two-chunk one ran in its own
    assert [job["batch_size"] for job in jobs] == [1 if i == long_one else 2 for i in range(3)]
    for job, body in zip(jobs, bodies, strict=True):  # each is the image its request makes alone
        assert np.abs(image_of(job) - alone(engine, body)).max() <= 2


@pytest.mark.parametrize(("raised", "kind"), [(RuntimeError, "server"), (UserError, "user")])
def test_a_job_that_fails_inside_a_batch_fails_alone(server, monkeypatch, raised, kind):
    engine = server.app.state.service.registry.engine(MODEL)
    rows = engine._rows

    def poisoned_rows(r, timings):
        if "poison" in r.prompt:
            raise raised("this request cannot be encoded")
        return rows(r, timings)

    monkeypatch.setattr(engine, "_rows", poisoned_rows)
    bodies = [{"prompt": "a red circle", "seed": 1}, {"prompt": "poison", "seed": 2}, {"prompt": "a cube", "seed": 3}]
    jobs = run_together(server, bodies)
    assert [job["status"] for job in jobs] == ["succeeded", "failed", "succeeded"]
    assert "this request cannot be encoded" in jobs[1]["error"]
    assert server.store.get(jobs[1]["id"]).error_kind == kind
    assert [job["batch_size"] for job in (jobs[0], jobs[2])] == [1, 1]  # the batch of three was run again job by job
    assert all(job["images"] for job in (jobs[0], jobs[2])) and not jobs[1]["images"]


def chunks_encoded(engine, request) -> tuple[int, int | None]:
    """The (base, refiner) conditioning lengths in chunks, as the engine encodes them."""
    with torch.inference_mode():
        (row, *_) = engine._rows(request, {})
    refiner = row.refiner_cond[0].embeds.shape[1] // (CHUNK_TOKENS + 2) if row.refiner_cond else None
    return row.cond[0].embeds.shape[1] // (CHUNK_TOKENS + 2), refiner


def test_batch_key_holds_the_chunk_count(engine, tiny_dir, tmp_path):
    from ssdxl.adapters.synthetic import make_embedding
    from ssdxl.models.loading import load_components

    def key(prompt, **kw):
        request = GenerationRequest(prompt, seed=1, steps=STEPS, width=64, height=64, **kw)
        return engine.batch_key(engine.resolve(request))

    assert key("a red circle") == key("blue " * 70) == key("a cube", negative_prompt="blurry")
    assert key("a red circle") != key(LONG)
    assert key("a red circle") != key("a red circle", negative_prompt=LONG_NEGATIVE)
    assert key(LONG) == key("a red circle", negative_prompt=LONG_NEGATIVE)
    assert key("a red circle") != key("a red BREAK circle")
    assert key("a red circle") != key("(red:1.2) " * 76)
    assert key("a red circle", refiner=True) != key(LONG, refiner=True)

    # the count is the encoded length, embeddings (one token per vector) and the refiner's prompts included
    file = make_embedding(load_components(tiny_dir("vega")), tmp_path / "fivetok.safetensors", vectors=5, seed=3)
    encoded, keyed = [], []
    for n in range(66, 76):
        for prompt, kw in (
            ("red " * n + "fivetok", {"embeddings": [str(file)]}),
            ("a fivetok, (red:1.1) " + "red " * (n - 4), {"embeddings": [str(file)]}),
            ("a fivetok++ " + "red " * (n - 2), {"embeddings": [str(file)], "prompt_syntax": "compel"}),
            ("red " * n + "fivetok", {"refiner": True, "high_noise_fraction": 0.5}),
            ("red " * n + "fivetok", {"negative_prompt": "a fivetok " + "blue " * n, "embeddings": [str(file)]}),
        ):
            request = engine.resolve(GenerationRequest(prompt, seed=1, steps=STEPS, width=64, height=64, **kw))
            keyed.append(engine.batch_key(request)[-1])
            encoded.append(chunks_encoded(engine, request))
    assert keyed == encoded
    assert {base for base, _ in encoded} == {1, 2}  # the prompts cross the chunk boundary
