"""Scale-out: a server with --redis queues jobs, two `ssdxl worker` processes run them, each exactly once, and
their job events wake the server's waiters."""

import asyncio
import uuid

import requests
from serverkit import MODEL, spawn_server, spawn_ssdxl, stop_process, wait_for_jobs, wait_until

from ssdxl.server.config import ServerConfig
from ssdxl.server.storage import open_data
from ssdxl.server.store import SUCCEEDED

JOBS = 12


def test_two_workers_run_every_job_exactly_once(tiny_dir, tmp_path, redis_url, adapter_dirs):
    from redis import Redis
    from rq import Worker

    from ssdxl.adapters.synthetic import make_lora
    from ssdxl.models.loading import load_components

    data_dir, model = tmp_path / "shared", tiny_dir(MODEL)
    folders = ["--lora-dir", str(adapter_dirs[0]), "--embedding-dir", str(adapter_dirs[1])]
    args = ["--redis", redis_url, "--model", f"{MODEL}={model}", "--max-batch", "2", *folders]
    workers = [spawn_ssdxl(["worker", *args], data_dir, tmp_path / f"worker{i}.log") for i in range(2)]
    server, url = spawn_server(data_dir, model, "--redis", redis_url, *folders, log=tmp_path / "server.log")
    try:
        wait_until(lambda: len(Worker.all(connection=Redis.from_url(redis_url))) == 2, 120, "both workers")
        # a LoRA added after the workers started: the server's refresh lets clients name it, workers re-read on a miss
        late = f"late{uuid.uuid4().hex[:6]}"
        make_lora(load_components(model), adapter_dirs[0] / f"{late}.safetensors", seed=21)
        requests.post(f"{url}/sdapi/v1/refresh-loras").raise_for_status()
        body = {"prompt": "a purple circle", "width": 64, "height": 64, "steps": 2}
        loras = [[], [["style", 0.5]], [[late, 1.0]]]
        bodies = [{**body, "seed": i, "loras": loras[i % 3]} for i in range(JOBS)]
        ids = [requests.post(f"{url}/v2/jobs", json=b).json()["id"] for b in bodies]
        jobs = wait_for_jobs(url, ids, timeout=240)
    finally:
        for process in (server, *workers):
            stop_process(process)
    logs = "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("*.log"))
    assert [j["status"] for j in jobs] == [SUCCEEDED] * JOBS, logs
    assert all(j["attempts"] == 1 for j in jobs)
    for job, sent in zip(jobs, bodies, strict=True):
        infotext, tags = job["images"][0]["infotext"], [f"<lora:{n}:{w:g}>" for n, w in sent["loras"]]
        assert all(tag in infotext for tag in tags) and ("<lora:" in infotext) == bool(tags)
    store, storage = open_data(ServerConfig(data_dir=data_dir))
    holders = {store.get(i).worker for i in ids}
    assert len(holders) == 2, f"one worker did all the work: {holders}"
    for job_id in ids:  # exactly one set of result files each
        assert [p.name for p in storage.files.root.glob(f"{job_id}-a*")] == [f"{job_id}-a1-0.png"]


def test_a_workers_job_events_wake_the_servers_waiters(redis_url, tmp_path):
    from ssdxl.server.dispatch import RedisDispatch, RedisNotifier
    from ssdxl.server.notify import JobNotifier

    store, _ = open_data(ServerConfig(data_dir=tmp_path))
    notifier = JobNotifier()
    dispatch = RedisDispatch(store, redis_url, poll=60.0, notifier=notifier)  # no store look could wake the waiter
    worker = RedisNotifier(redis_url)
    dispatch.start()

    async def waiter() -> bool:
        with notifier.watch("job-7") as watch:
            for _ in range(50):  # publish until the listener has subscribed and passed one on
                worker.changed(["job-3", "job-7"])
                if await watch.wait(0.2):
                    return True
        return False

    try:
        assert asyncio.run(waiter())
    finally:
        dispatch.stop()
