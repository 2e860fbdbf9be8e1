"""The durable pieces without HTTP: claims, recovery after a crash, keys, signed links, previews; on the SQLite
store and the PostgreSQL one alike (the PostgreSQL cases skip without PostgreSQL)."""

import hashlib
import os
import sqlite3
import time

import pytest
import torch
from PIL import Image

from ssdxl.models.families import SDXL_LATENTS
from ssdxl.models.latent_preview import latent_preview
from ssdxl.server.auth import KeyStore, RateLimiter, parse_burst, parse_rate
from ssdxl.server.config import ServerConfig
from ssdxl.server.storage import open_data
from ssdxl.server.store import CANCELLED, FAILED, HOST, QUEUED, RUNNING, SUCCEEDED

DEAD_WORKER = "{host}:999999999:p:r"  # a pid that cannot exist on this host


@pytest.fixture(params=["sqlite", "postgresql"])
def data(request, tmp_path):
    """(JobStore, Storage) on each store backend."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    store, storage = open_data(ServerConfig(data_dir=tmp_path, max_attempts=3, store=url))
    yield store, storage
    store.db.close()


@pytest.fixture
def sqlite_data(tmp_path):
    return open_data(ServerConfig(data_dir=tmp_path, max_attempts=3))


def add(store, n=1):
    return [store.add(f"{i:032x}", owner=None, model="m", request={"prompt": "p"}).id for i in range(n)]


def force_holder(store, job_id, worker, lease_until):
    with store.db.transaction() as conn:
        conn.execute("UPDATE jobs SET worker = ?, lease_until = ? WHERE id = ?", (worker, lease_until, job_id))


def test_a_job_is_claimed_once_and_only_its_holder_finishes_it(data):
    store, _ = data
    (job,) = add(store)
    assert store.claim([job], "a", lease=60) == [job]
    assert store.claim([job], "b", lease=60) == []
    assert not store.finish(job, "b", SUCCEEDED, result={"images": []})
    assert store.finish(job, "a", SUCCEEDED, result={"images": []})
    assert not store.finish(job, "a", SUCCEEDED, result={"images": []})  # never twice
    assert store.get(job).status == SUCCEEDED and store.get(job).attempts == 1


def test_queue_positions_follow_arrival(data):
    store, _ = data
    jobs = add(store, 3)
    assert [store.position(store.get(j)) for j in jobs] == [0, 1, 2]
    store.claim(jobs[:1], "a", lease=60)
    assert [store.position(store.get(j)) for j in jobs] == [0, 0, 1]


def test_recovery_requeues_then_fails_with_a_clear_message(data):
    store, _ = data
    (job,) = add(store)
    dead = DEAD_WORKER.format(host=HOST)
    store.claim([job], "x", lease=60)
    force_holder(store, job, dead, time.time() + 60)  # lease still valid, but the process is gone
    assert store.recover() == [job] and store.get(job).status == QUEUED
    store.claim([job], "y", lease=60)
    earlier_self = f"{HOST}:{os.getpid()}:earlier-process:r"  # our pid, reused
    force_holder(store, job, earlier_self, time.time() + 60)
    assert store.recover() == [job]
    store.claim([job], "z", lease=60)
    force_holder(store, job, "elsewhere:1:x", time.time() - 1)  # another host: only the lease tells
    assert store.recover() == [job]
    final = store.get(job)
    assert final.status == FAILED and "stopped 3 times" in final.error and final.error_kind == "server"


def test_a_live_claim_is_left_alone_and_a_cancelled_orphan_is_cancelled(data):
    store, _ = data
    live, orphan = add(store, 2)
    store.claim([live, orphan], "other-host:1:x", lease=60)
    store.cancel(orphan)
    assert store.get(orphan).status == RUNNING and store.get(orphan).cancel_requested
    force_holder(store, orphan, "other-host:1:x", time.time() - 1)
    assert store.recover() == [orphan]
    assert store.get(orphan).status == CANCELLED and store.get(live).status == RUNNING


def test_cancelling_a_queued_job_is_immediate(data):
    store, _ = data
    (job,) = add(store)
    assert store.cancel(job).status == CANCELLED
    assert store.claim([job], "a", lease=60) == []


def test_keys_are_stored_hashed(tmp_path, sqlite_data):
    store, _ = sqlite_data
    keys = KeyStore(store.db)
    assert not keys.any()
    key, token = keys.add("ci", parse_rate("2/s"))
    assert key.rate_per_min == 120 and keys.lookup(token) == keys.list()[0]
    assert keys.lookup(token + "x") is None
    dump = "\n".join(sqlite3.connect(store.db.path).iterdump())
    assert token not in dump and hashlib.sha256(token.encode()).hexdigest() in dump
    assert keys.remove("ci") == 1 and keys.lookup(token) is None


def test_rate_limit_is_a_token_bucket(data):
    store, _ = data
    key, _ = KeyStore(store.db).add("slow", 2)
    limiter = RateLimiter()
    assert limiter.retry_after(key) is None and limiter.retry_after(key) is None
    wait = limiter.retry_after(key)
    assert wait is not None and 0 < wait <= 30
    assert limiter.retry_after(None) is None


def test_a_per_second_rate_bursts_its_own_count_not_a_minutes_worth(data):
    store, _ = data
    key, _ = KeyStore(store.db).add("api", parse_rate("2/s"), parse_burst("2/s"))
    limiter = RateLimiter()
    allowed = sum(limiter.retry_after(key) is None for _ in range(120))
    assert allowed == 2  # it let 120 through when the bucket was a minute's worth
    assert KeyStore(store.db).list()[0].burst == 2


def test_stored_names_only_and_links_expire(data):
    _, storage = data
    name = f"{0:032x}-a1-0.png"
    assert storage.check(name) == name and storage.read(name) is None
    for bad in ("../ssdxl.db", "x.png", f"{0:032x}-a1-0.png/../../x", "/etc/passwd"):
        with pytest.raises(ValueError):
            storage.read(bad)
    query = dict(part.split("=") for part in storage.sign(name, ttl=60).split("&"))
    assert storage.verify(name, query["expires"], query["signature"])
    assert not storage.verify(f"{1:032x}-a1-0.png", query["expires"], query["signature"])
    assert not storage.verify(name, str(int(query["expires"]) + 1), query["signature"])
    expired = dict(part.split("=") for part in storage.sign(name, ttl=-1).split("&"))
    assert not storage.verify(name, expired["expires"], expired["signature"])


def test_request_round_trip_keeps_images(data):
    from ssdxl.sampling.request import GenerationRequest

    _, storage = data
    init = Image.new("RGB", (16, 8), (10, 20, 30))
    mask = Image.new("L", (16, 8), 255)
    request = GenerationRequest("p", seed=3, init_image=init, mask_image=mask, crop_top_left=(1, 2))
    again = storage.load_request(storage.save_request(f"{5:032x}", request))
    assert again.crop_top_left == (1, 2) and again.seed == 3
    assert again.init_image.tobytes() == init.tobytes() and again.mask_image.mode == "L"


def test_latent_preview_is_the_fixed_linear_map():
    image = latent_preview(torch.zeros(1, 4, 8, 6), SDXL_LATENTS)
    assert image.size == (6, 8)
    expected = tuple(round((float(b) + 1) * 127.5) for b in SDXL_LATENTS.rgb_bias)
    assert image.getpixel((0, 0)) == expected


def test_runner_runs_what_it_claimed_when_another_worker_took_part(tiny_dir, data):
    from ssdxl.sampling.request import GenerationRequest
    from ssdxl.server.registry import ModelRegistry
    from ssdxl.server.runner import Runner

    store, storage = data
    request = GenerationRequest("p", seed=1, steps=2, width=64, height=64)
    ids = [f"{i:032x}" for i in range(3)]
    for job_id in ids:
        store.add(job_id, owner=None, model="m", request=storage.save_request(job_id, request))
    registry = ModelRegistry({"m": str(tiny_dir("vega"))}, device="cpu", dtype="float32")
    runner = Runner(store, storage, registry)
    claim = store.claim

    def someone_else_first(job_ids, worker, lease):  # another worker wins the oldest job meanwhile
        claim(job_ids[:1], "elsewhere:1:x", lease)
        return claim(job_ids, worker, lease)

    store.claim = someone_else_first
    assert runner.run_next()
    jobs = [store.get(job_id) for job_id in ids]
    assert [j.status for j in jobs] == [RUNNING, SUCCEEDED, SUCCEEDED]
    assert jobs[1].result["batch_size"] == 2 and jobs[2].preview is not None


def _runner_with_jobs(tiny_dir, data, n):
    from ssdxl.sampling.request import GenerationRequest
    from ssdxl.server.registry import ModelRegistry
    from ssdxl.server.runner import Runner

    store, storage = data
    request = GenerationRequest("p", seed=1, steps=2, width=64, height=64)
    ids = [f"{i:032x}" for i in range(n)]
    for job_id in ids:
        store.add(job_id, owner=None, model="m", request=storage.save_request(job_id, request))
    registry = ModelRegistry({"m": str(tiny_dir("vega"))}, device="cpu", dtype="float32")
    return Runner(store, storage, registry), ids


def test_a_result_whose_write_was_cut_off_is_read_back_not_written_twice(tiny_dir, sqlite_data, caplog):
    from ssdxl.server.db import StoreUnavailable

    store, storage = sqlite_data
    runner, (job,) = _runner_with_jobs(tiny_dir, sqlite_data, 1)
    finish, calls = store.finish, []

    def committed_then_lost(*args, **kwargs):  # the COMMIT went through, its answer did not
        calls.append(args)
        done = finish(*args, **kwargs)
        if len(calls) == 1:
            raise StoreUnavailable("PostgreSQL went away during a transaction")
        return done

    store.finish = committed_then_lost
    progress = store.progress

    def progress_fails_once(*args):
        store.progress = progress
        raise StoreUnavailable("PostgreSQL is unreachable")

    store.progress = progress_fails_once
    assert runner.run_next()
    final = store.get(job)
    assert final.status == SUCCEEDED and final.attempts == 1 and len(calls) == 1  # read back, not finished again
    assert storage.read(final.result["images"][0]["file"]) is not None  # the images were kept
    assert "not recorded" in caplog.text  # progress went on without the store


def test_a_batch_cut_short_by_the_store_gives_its_claims_back(tiny_dir, sqlite_data):
    from ssdxl.server.db import StoreUnavailable

    store, _ = sqlite_data
    runner, ids = _runner_with_jobs(tiny_dir, sqlite_data, 2)
    claim = store.claim

    def claimed_then_lost(job_ids, worker, lease):
        claim(job_ids, worker, lease)
        raise StoreUnavailable("PostgreSQL went away during a transaction")

    store.claim = claimed_then_lost
    with pytest.raises(StoreUnavailable):
        runner.run_next()
    assert [(store.get(i).status, store.get(i).attempts, store.get(i).worker) for i in ids] == [(QUEUED, 0, None)] * 2
    store.claim = claim
    assert runner.run_next()
    assert [(store.get(i).status, store.get(i).attempts) for i in ids] == [(SUCCEEDED, 1)] * 2
