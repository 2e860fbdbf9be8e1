"""The server loop: previews every N steps, a budget of loaded models, waiters woken by events rather than polling,
and a synchronous client that hangs up cancelling its job."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import socket
import threading
import time
import uuid
import weakref
from urllib.parse import urlsplit

import pytest
import requests
from PIL import Image
from serverkit import MODEL, start_thread_server, wait_for_jobs, wait_until

from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.config import ServerConfig
from ssdxl.server.notify import JobNotifier
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.runner import Runner
from ssdxl.server.service import JobService
from ssdxl.server.storage import open_data
from ssdxl.server.store import CANCELLED, SUCCEEDED

FALLBACK = 2.0  # the waiters' look at the store for jobs other processes finish (ServerConfig.poll)


@pytest.fixture
def data(tmp_path):
    return open_data(ServerConfig(data_dir=tmp_path))


def queue(store, storage, model: str, **fields) -> str:
    request = GenerationRequest("a red circle", seed=1, width=64, height=64, **{"steps": 2, **fields})
    job_id = uuid.uuid4().hex
    store.add(job_id, owner=None, model=model, request=storage.save_request(job_id, request))
    return job_id


@pytest.mark.parametrize(("every", "previewed"), [(4, [4, 6]), (0, [])])
def test_previews_every_n_steps_and_on_the_last_progress_every_step(tiny_dir, data, every, previewed):
    store, storage = data
    job_id = queue(store, storage, "m", steps=6)
    runner = Runner(
        store, storage, ModelRegistry({"m": str(tiny_dir(MODEL))}, device="cpu", dtype="float32"), preview_every=every
    )
    steps, encoded, kept = [], [], []
    progress = store.progress

    def spy(worker, updates):
        ((_, step, total, preview),) = updates
        steps.append((step, total))
        if preview is not None:
            encoded.append(step)
        progress(worker, updates)
        kept.append(store.get(job_id).preview is not None)

    store.progress = spy
    assert runner.run_next()
    assert steps == [(step, 6) for step in range(1, 7)]
    assert encoded == previewed
    assert kept == [bool(previewed) and step >= previewed[0] for step in range(1, 7)]  # the latest stays in between
    assert store.get(job_id).status == SUCCEEDED


def test_a_model_budget_keeps_one_engine_loaded_and_both_models_still_generate(tiny_dir, data, monkeypatch):
    store, storage = data
    alive_at_load: list[int] = []
    loaded: list[weakref.ref] = []
    load = Engine.load

    def counting_load(*args, **kwargs):
        gc.collect()
        alive_at_load.append(sum(ref() is not None for ref in loaded))
        engine = load(*args, **kwargs)
        loaded.append(weakref.ref(engine))
        return engine

    monkeypatch.setattr(Engine, "load", counting_load)
    sources = {"a": str(tiny_dir(MODEL)), "b": str(tiny_dir("ssd-1b"))}
    registry = ModelRegistry(sources, device="cpu", dtype="float32", max_loaded=1)
    runner = Runner(store, storage, registry)
    jobs = []
    for model in ("a", "b", "a"):  # one at a time, so each runs as its own batch
        jobs.append(queue(store, storage, model))
        assert runner.run_next()
    done = [store.get(job_id) for job_id in jobs]
    assert [job.status for job in done] == [SUCCEEDED] * 3
    assert alive_at_load == [0, 0, 0]  # a, then b once a was gone, then a again once b was gone

    def pixels(job):
        return Image.open(io.BytesIO(storage.read(job.result["images"][0]["file"]))).tobytes()

    assert pixels(done[0]) == pixels(done[2]) != pixels(done[1])  # the reloaded model makes the same image

    with registry.using("a") as in_use:  # a batch runs on a: loading b must not unload it
        registry.engine("b")
        assert registry.engine("a") is in_use
    assert len(loaded) == 4


class _Connected:
    """A client that stays connected (what ``JobService.wait`` asks a request)."""

    async def is_disconnected(self) -> bool:
        return False


@pytest.mark.parametrize("notified", [True, False])
def test_a_waiter_wakes_when_its_job_changes_here_and_polls_for_other_processes(data, notified):
    store, storage = data
    job_id = queue(store, storage, "m")
    store.claim([job_id], "elsewhere:1:p:t", lease=60)
    notifier = JobNotifier()
    service = JobService(store, storage, None, None, ServerConfig(poll=FALLBACK), notifier)
    finish_after = 0.3

    def finish() -> None:  # the runner thread in this process (notified) or a worker elsewhere (store only)
        store.finish(job_id, "elsewhere:1:p:t", SUCCEEDED, result={"images": []})
        if notified:
            notifier.changed([job_id])

    async def waited() -> float:
        start = time.monotonic()
        threading.Timer(finish_after, finish).start()
        job = await service.wait(store.get(job_id), _Connected())
        assert job.status == SUCCEEDED
        return time.monotonic() - start - finish_after

    delay = asyncio.run(waited())
    if notified:
        assert delay < 0.3, f"woken {delay:.2f} s after the job finished (fallback {FALLBACK} s)"
    else:
        assert FALLBACK - finish_after - 0.2 < delay < FALLBACK + 1.0  # found by the fallback look, not before


@pytest.fixture(scope="module")
def slow_poll_server(tiny_dir, tmp_path_factory):
    """A server whose waiters look at the store only every FALLBACK seconds unless woken."""
    handle, stop = start_thread_server(tmp_path_factory.mktemp("loop"), tiny_dir(MODEL), poll=FALLBACK)
    yield handle
    stop()


def newest_job(url: str) -> dict | None:
    jobs = requests.get(f"{url}/v2/jobs", params={"limit": 1}, timeout=10).json()
    return jobs[0] if jobs else None


def test_a_sync_request_answers_as_soon_as_its_job_is_done(slow_poll_server):
    url = slow_poll_server.url
    body = {"prompt": "a red circle", "num_inference_steps": 2, "img_width": 64, "img_height": 64}
    for _ in range(3):
        response = requests.post(f"{url}/v1/{MODEL}", json=body, timeout=60)
        answered = time.time()
        assert response.status_code == 200, response.text
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)
        delay = answered - newest_job(url)["finished"]
        assert delay < 0.5, f"answered {delay:.2f} s after the job finished (fallback {FALLBACK} s)"


def hang_up_during(url: str, headers: dict[str, str]) -> dict:
    """POST a long Segmind job over a raw socket, close the connection once it is running; the job."""
    body = json.dumps({"prompt": "a blue square", "num_inference_steps": 150, "img_width": 64, "img_height": 64})
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port)) as client:
        client.sendall(
            f"POST /v1/{MODEL} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )

        def running():
            job = newest_job(url)
            mine = job and job["status"] == "running" and job["params"]["prompt"] == "a blue square"
            return job if mine and job["step"] >= 1 else None

        job = wait_until(running, 60, "the job to start stepping")
    return job


def test_a_sync_client_that_hangs_up_cancels_its_job(slow_poll_server):
    job = hang_up_during(slow_poll_server.url, {})
    (done,) = wait_for_jobs(slow_poll_server.url, [job["id"]], timeout=30)
    assert done["status"] == CANCELLED and done["step"] < 150 and not done["images"]


def test_a_client_with_an_idempotency_key_may_hang_up_and_come_back(slow_poll_server):
    job = hang_up_during(slow_poll_server.url, {"Idempotency-Key": uuid.uuid4().hex})
    (done,) = wait_for_jobs(slow_poll_server.url, [job["id"]], timeout=120)
    assert done["status"] == SUCCEEDED
