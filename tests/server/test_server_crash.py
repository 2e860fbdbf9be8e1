"""kill -9 the server with jobs queued and running; after a restart every job finishes exactly once."""

import os
import signal

import requests
from serverkit import MODEL, spawn_server, stop_process, wait_for_jobs, wait_until

from ssdxl.server.config import ServerConfig
from ssdxl.server.storage import open_data
from ssdxl.server.store import RUNNING

JOBS = 4
STEPS = 40


def test_jobs_survive_kill_9_and_run_to_completion_once(tiny_dir, tmp_path):
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    process, url = spawn_server(data_dir, tiny_dir(MODEL), "--max-batch", "1", log=log)
    try:
        body = {"prompt": "a white cross", "width": 64, "height": 64, "steps": STEPS}
        ids = [requests.post(f"{url}/v2/jobs", json={**body, "seed": i}).json()["id"] for i in range(JOBS)]
        first = f"{url}/v2/jobs/{ids[0]}"
        wait_until(lambda: requests.get(first).json()["step"] >= 2, 120, "the first job to be running")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    store, storage = open_data(ServerConfig(data_dir=data_dir))
    statuses = [store.get(i).status for i in ids]
    assert statuses[0] == RUNNING and "queued" in statuses  # killed mid-run, with work waiting

    process, url = spawn_server(data_dir, tiny_dir(MODEL), "--max-batch", "1", log=log)
    try:
        jobs = wait_for_jobs(url, ids, timeout=240)
    finally:
        stop_process(process)
    assert [j["status"] for j in jobs] == ["succeeded"] * JOBS, log.read_text()[-3000:]
    assert jobs[0]["attempts"] == 2 and all(j["attempts"] == 1 for j in jobs[1:])
    assert [j["images"][0]["seed"] for j in jobs] == list(range(JOBS))
    for job in jobs:  # one set of result files per job: the attempt that completed
        files = sorted(p.name for p in storage.files.root.glob(f"{job['id']}-a*"))
        assert files == [f"{job['id']}-a{job['attempts']}-0.png"]
