"""The job store on PostgreSQL (``--store postgresql://``): claims that race across threads and processes, idempotency
keys under concurrency, a server restart that the store waits out, a 503 when it is away too long, keys and images in
the database, and the scale-out scenario: a server and two workers that share no disk, one worker killed with -9
mid-batch and PostgreSQL killed and restarted while jobs run; every job completes exactly once. Skips without
PostgreSQL (``pgkit``)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests
from pgkit import running_server
from serverkit import MODEL, spawn_server, spawn_ssdxl, start_thread_server, stop_process, wait_until
from typer.testing import CliRunner

from ssdxl.server import postgres
from ssdxl.server.config import ServerConfig
from ssdxl.server.db import StoreDamaged, StoreUnavailable
from ssdxl.server.storage import RESULT_NAME, open_data
from ssdxl.server.store import IDEMPOTENCY, QUEUED, RUNNING, SUCCEEDED, IdempotentRequest


def _open(url, tmp_path, **settings):
    return open_data(ServerConfig(data_dir=tmp_path / "unused", store=url, **settings))


def _add(store, n):
    return [store.add(f"{i:032x}", owner=None, model="m", request={"prompt": "p"}).id for i in range(n)]


def test_racing_runners_claim_every_job_exactly_once(pg_url, tmp_path):
    store, _ = _open(pg_url, tmp_path)
    ids = _add(store, 60)
    taken: dict[str, list[str]] = {}
    errors = []

    def runner(name):
        try:
            mine = _open(pg_url, tmp_path)[0]  # its own connections, as another process would have
            while candidates := mine.queued(["m"], limit=4):
                taken[name] = taken.get(name, []) + mine.claim([job.id for job in candidates], name, lease=60)
        except Exception as exc:  # a runner that died would let the others look exactly-once
            errors.append(exc)

    threads = [threading.Thread(target=runner, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads) and len(taken) > 1
    claims = [job_id for claimed in taken.values() for job_id in claimed]
    assert sorted(claims) == sorted(ids)  # every job once, none twice
    assert all(store.get(job_id).status == RUNNING and store.get(job_id).attempts == 1 for job_id in ids)


def test_an_idempotency_key_makes_one_job_under_concurrent_retries(pg_url, tmp_path):
    store, _ = _open(pg_url, tmp_path)
    made, errors = [], []

    def retry(n):
        IDEMPOTENCY.set(IdempotentRequest(owner=None, key="order-7", fingerprint="f"))
        try:
            made.append(_open(pg_url, tmp_path)[0].add(f"{n:032x}", owner=None, model="m", request={"prompt": "p"}).id)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=retry, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(made) == 8 and len(set(made)) == 1
    assert store.count((QUEUED,)) == 1


def test_images_keys_and_settings_live_in_the_database(pg_url, tmp_path):
    from PIL import Image

    from ssdxl.sampling.request import GenerationRequest
    from ssdxl.server.auth import KeyStore

    store, storage = _open(pg_url, tmp_path)
    init = Image.new("RGB", (16, 8), (10, 20, 30))
    record = storage.save_request(f"{1:032x}", GenerationRequest("p", init_image=init))
    again = _open(pg_url, tmp_path / "elsewhere")[1].load_request(record)  # another machine: no shared folder
    assert again.init_image.tobytes() == init.tobytes()
    assert not (tmp_path / "unused").exists() and not (tmp_path / "elsewhere").exists()
    _, token = KeyStore(store.db).add("ci")
    other = KeyStore(_open(pg_url, tmp_path)[0].db)
    assert other.lookup(token) is not None and other.required()
    assert _open(pg_url, tmp_path)[0].meta("link_secret") == store.meta("link_secret")


def test_a_store_from_a_newer_ssdxl_or_a_bad_url_is_refused_in_one_line(pg_url, tmp_path):
    store, _ = _open(pg_url, tmp_path)
    store.set_meta("schema_version", "99")
    with pytest.raises(StoreDamaged, match=r"schema version 99, newer .*upgrade ssdxl") as caught:
        _open(pg_url, tmp_path)
    assert "\n" not in str(caught.value) and "postgres@127.0.0.1" in str(caught.value)
    with pytest.raises(StoreDamaged, match="must be a postgresql://"):
        _open("mysql://x@y/z", tmp_path)


def test_ssdxl_keys_and_the_server_share_a_postgresql_store(pg_url, tmp_path, tiny_dir):
    from ssdxl.cli.main import app as cli

    added = CliRunner().invoke(cli, ["keys", "add", "--name", "ops", "--store", pg_url])
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[0]
    handle, stop = start_thread_server(tmp_path / "data", tiny_dir(MODEL), store=pg_url)
    try:
        assert requests.get(f"{handle.url}/v2/models").status_code == 401
        body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2}
        job = requests.post(f"{handle.url}/v1/{MODEL}", json=body, headers={"x-api-key": token})
        assert job.status_code == 200 and job.headers["content-type"] == "image/jpeg"
    finally:
        stop()
    listed = CliRunner().invoke(cli, ["keys", "list"], env={"SSDXL_STORE": pg_url})
    assert listed.exit_code == 0 and "\tops\t" in listed.stdout


@pytest.fixture
def own_postgres():
    """A PostgreSQL server of this test's own, to kill and restart."""
    with running_server() as server:
        yield server


def test_the_store_waits_out_a_restart_and_answers_503_when_it_lasts(own_postgres, tmp_path, tiny_dir, monkeypatch):
    url = own_postgres.new_database()
    store, _ = _open(url, tmp_path)
    (job,) = _add(store, 1)
    own_postgres.kill()
    restart = threading.Timer(1.5, own_postgres.start)
    restart.start()
    assert store.get(job).status == QUEUED  # the read waited for the restart instead of failing
    restart.join()
    assert store.claim([job], "w", lease=60) == [job]

    monkeypatch.setattr(postgres, "OUTAGE", 1.0)
    handle, stop = start_thread_server(tmp_path / "data", tiny_dir(MODEL), store=url)
    try:
        own_postgres.stop()
        answer = requests.post(f"{handle.url}/v2/jobs", json={"prompt": "a red circle"}, timeout=60)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "5", answer.text
        assert "job store is unavailable" in answer.json()["detail"]
        own_postgres.start()
        assert requests.post(f"{handle.url}/v2/jobs", json={"prompt": "a red circle"}).status_code == 202
    finally:
        stop()
    with pytest.raises(StoreUnavailable):
        own_postgres.stop()
        postgres.PostgresDatabase(url, outage=0.5).connection().execute("SELECT 1")


STEPS = 80  # long enough that a job seen mid-run is still running when its worker is killed
JOBS = 10


def _worker_pid(worker: str | None) -> int | None:
    return int(worker.split(":")[1]) if worker else None


def test_two_workers_without_shared_disk_survive_a_killed_worker_and_a_postgresql_restart(
    own_postgres, redis_url, tiny_dir, tmp_path
):
    url, model = own_postgres.new_database(), tiny_dir(MODEL)
    store_args = ["--store", url, "--redis", redis_url, "--max-batch", "2"]
    workers = [
        spawn_ssdxl(["worker", *store_args, "--model", f"{MODEL}={model}"], tmp_path / f"w{i}", tmp_path / f"w{i}.log")
        for i in range(2)
    ]
    server, base = spawn_server(tmp_path / "server", model, *store_args, log=tmp_path / "server.log")
    store, storage = _open(url, tmp_path)
    logs = lambda: "\n".join(p.read_text()[-2500:] for p in tmp_path.glob("*.log"))  # noqa: E731
    try:
        body = {"prompt": "a white cross", "width": 64, "height": 64, "steps": STEPS}
        ids = [requests.post(f"{base}/v2/jobs", json={**body, "seed": i}).json()["id"] for i in range(JOBS)]

        def running_on(pids):  # a job some worker in ``pids`` is running, past its first steps
            jobs = [store.get(i) for i in ids]
            mid_run = (j for j in jobs if j.status == RUNNING and j.step >= 2 and _worker_pid(j.worker) in pids)
            return next(mid_run, None)

        victim_job = wait_until(lambda: running_on({w.pid for w in workers}), 180, "a worker to be mid-batch")
        victim = next(w for w in workers if w.pid == _worker_pid(victim_job.worker))
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        survivor = next(w for w in workers if w is not victim)

        wait_until(lambda: running_on({survivor.pid}), 180, "the surviving worker to be mid-batch")
        own_postgres.kill()  # mid-run: progress, claims and results meet a store that is gone
        time.sleep(2)
        own_postgres.start()

        def finished():
            try:
                jobs = [store.get(i) for i in ids]
            except StoreUnavailable:
                return None
            return jobs if all(j.done for j in jobs) else None

        jobs = wait_until(finished, 300, "every job to finish", interval=0.5)
    finally:
        for process in (server, *workers):
            stop_process(process)
    assert [j.status for j in jobs] == [SUCCEEDED] * JOBS, logs()
    rerun = next(j for j in jobs if j.id == victim_job.id)
    assert rerun.attempts == 2 and _worker_pid(rerun.worker) == survivor.pid
    assert all(j.attempts in (1, 2) for j in jobs)
    assert [j.result["images"][0]["seed"] for j in jobs] == list(range(JOBS))
    names = storage.files.names(RESULT_NAME)
    for job in jobs:  # one set of result images per job, in the database: the attempt that completed
        assert sorted(n for n in names if n.startswith(f"{job.id}-a")) == [f"{job.id}-a{job.attempts}-0.png"]
    assert not [p for folder in ("w0", "w1", "server") for p in (tmp_path / folder).rglob("*.png")]  # no shared disk
