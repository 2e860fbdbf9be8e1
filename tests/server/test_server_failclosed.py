"""The server fails closed: a damaged store refuses to start (and --reset-store moves it aside), keys stay required
once configured, a clean stop leaves every job in ssdxl.db, files are private, signed links live at most 24 h,
a Redis outage never turns a stored job into a 500, and Idempotency-Key makes retries safe."""

import hashlib
import hmac
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
import requests
from serverkit import (
    MODEL,
    free_port,
    spawn_server,
    spawn_ssdxl,
    start_keyed_server,
    start_thread_server,
    stop_process,
    wait_for_jobs,
    wait_until,
)
from typer.testing import CliRunner

from ssdxl.server.auth import KEYS_MARKER, KeyStore
from ssdxl.server.config import ServerConfig
from ssdxl.server.db import DB_FILE, StoreDamaged
from ssdxl.server.storage import open_data

TINY = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2}
YEAR = 365 * 24 * 3600


def make_store(data_dir, jobs=3, key=True):
    """A store with ``jobs`` queued jobs (one with a result file) and maybe a key; returns (token, job ids)."""
    store, storage = open_data(ServerConfig(data_dir=data_dir))
    token = KeyStore(store.db).add("alice")[1] if key else None
    ids = [store.add(f"{i:032x}", owner=None, model=MODEL, request={"prompt": "p" * 400}).id for i in range(jobs)]
    if ids:
        (storage.files.root / f"{ids[0]}-a1-0.png").write_bytes(b"png")
    store.db.checkpoint()
    return token, ids


def private(path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def ssdxl_cli(*args, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ssdxl.cli.main", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


# ---------------------------------------------------------------------------------------------- damaged stores


def test_truncated_store_refuses_to_start_then_reset_store_moves_it_aside(tiny_dir, tmp_path):
    data_dir, model = tmp_path / "data", tiny_dir(MODEL)
    make_store(data_dir, jobs=40)
    os.truncate(data_dir / DB_FILE, 8192)

    port = str(free_port())
    refused = ssdxl_cli("serve", "--data", str(data_dir), "--model", f"{MODEL}={model}", "--port", port)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert str(data_dir / DB_FILE) in lines[0] and "--reset-store" in lines[0] and "restore" in lines[0]
    keys = ssdxl_cli("keys", "list", "--data", str(data_dir))  # nor does `ssdxl keys` make a fresh store
    assert keys.returncode == 2 and "--reset-store" in keys.stderr
    assert (data_dir / DB_FILE).stat().st_size == 8192

    log = tmp_path / "server.log"
    process, url = spawn_server(data_dir, model, "--reset-store", log=log)
    try:
        broken = sorted(p.name for p in data_dir.glob(f"{DB_FILE}.broken-*"))
        assert broken and not broken[0].endswith(("-wal", "-shm")), broken
        assert (data_dir / broken[0]).stat().st_size == 8192
        assert list(data_dir.glob("images.broken-*/*-a1-0.png"))  # the lost jobs' files went aside too
        assert "moved aside" in log.read_text()
        # the store lost its keys, the marker next to it did not: closed, not open
        assert requests.post(f"{url}/v2/jobs", json=TINY).status_code == 401
        added = CliRunner().invoke(_cli(), ["keys", "add", "--name", "bob", "--data", str(data_dir)])
        assert added.exit_code == 0, added.output
        headers = {"x-api-key": added.stdout.strip().splitlines()[0]}
        ids = [requests.post(f"{url}/v2/jobs", json={**TINY, "seed": i}, headers=headers).json()["id"] for i in (1, 2)]
        wait_for_jobs(url, ids, timeout=120, headers=headers)
        # files are the owner's alone while the server runs
        for suffix in ("", "-wal", "-shm"):
            assert private(data_dir / f"{DB_FILE}{suffix}"), suffix
        assert stat.S_IMODE((data_dir / "images").stat().st_mode) == 0o700
        assert private(data_dir / KEYS_MARKER)
    finally:
        stop_process(process)
    assert process.returncode in (0, -15), log.read_text()[-2000:]  # uvicorn re-raises SIGTERM after a clean stop

    # a clean stop checkpointed the WAL: the main file alone holds every job
    wal = data_dir / f"{DB_FILE}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    alone = tmp_path / "alone.db"
    shutil.copy(data_dir / DB_FILE, alone)
    with sqlite3.connect(alone) as conn:
        stored = {row[0]: row[1] for row in conn.execute("SELECT id, status FROM jobs")}
    assert stored == {ids[0]: "succeeded", ids[1]: "succeeded"}

    # and the healthy new store starts again without --reset-store (and is not reset)
    store, _ = open_data(ServerConfig(data_dir=data_dir))
    assert store.get(ids[0]).status == "succeeded"
    assert len(list(data_dir.glob(f"{DB_FILE}.broken-*"))) == len(broken)


def _cli():
    from ssdxl.cli.main import app

    return app


def test_missing_store_next_to_job_files_is_refused(tmp_path):
    data_dir = tmp_path / "data"
    make_store(data_dir, key=False)
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreDamaged, match="missing or empty, but .* holds the files of 1 job"):
        open_data(ServerConfig(data_dir=data_dir))
    (data_dir / DB_FILE).touch()  # an empty file is no better
    with pytest.raises(StoreDamaged, match="--reset-store"):
        open_data(ServerConfig(data_dir=data_dir))
    store, _ = open_data(ServerConfig(data_dir=data_dir, reset_store=True))
    assert store.count(("queued",)) == 0 and list(data_dir.glob("images.broken-*"))


def test_a_lost_wal_is_noticed(tmp_path):
    """Jobs committed only to the -wal file, the process killed, the -wal lost: the store misses jobs with results."""
    data_dir, copy = tmp_path / "data", tmp_path / "copy"
    store, storage = open_data(ServerConfig(data_dir=data_dir))
    store.db.checkpoint()
    job = store.add("ab" * 16, owner=None, model=MODEL, request={"prompt": "p"}).id
    (storage.files.root / f"{job}-a1-0.png").write_bytes(b"png")
    assert (data_dir / f"{DB_FILE}-wal").stat().st_size > 0
    copy.mkdir()
    shutil.copy(data_dir / DB_FILE, copy / DB_FILE)  # what a crash plus a truncated -wal leaves
    shutil.copytree(data_dir / "images", copy / "images")
    with pytest.raises(StoreDamaged, match="does not know 1 job"):
        open_data(ServerConfig(data_dir=copy))


def test_garbage_and_newer_stores_are_refused(tmp_path):
    data_dir = tmp_path / "data"
    make_store(data_dir, key=False)
    with sqlite3.connect(data_dir / DB_FILE) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreDamaged, match="schema version 99"):
        open_data(ServerConfig(data_dir=data_dir))
    (data_dir / DB_FILE).write_bytes(b"this is not a database" * 500)
    (data_dir / f"{DB_FILE}-wal").unlink(missing_ok=True)
    with pytest.raises(StoreDamaged, match=str(data_dir / DB_FILE)):
        open_data(ServerConfig(data_dir=data_dir))


def test_files_are_made_private_and_fixed_on_start(tmp_path):
    data_dir = tmp_path / "data"
    make_store(data_dir)
    assert private(data_dir / DB_FILE) and private(data_dir / KEYS_MARKER)
    for path in (data_dir / DB_FILE, data_dir / "images"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    store, _ = open_data(ServerConfig(data_dir=data_dir))
    store.db.connection()
    assert private(data_dir / DB_FILE) and private(data_dir / f"{DB_FILE}-wal")
    assert stat.S_IMODE((data_dir / "images").stat().st_mode) == 0o700


# ---------------------------------------------------------------------------------------------- keys stay required


def test_keys_stay_required_when_the_store_loses_them(tiny_dir, tmp_path):
    data_dir = tmp_path / "data"
    make_store(data_dir, jobs=0)
    store, _ = open_data(ServerConfig(data_dir=data_dir))
    with store.db.transaction() as conn:  # the keys table loses its rows
        conn.execute("DELETE FROM api_keys")
    handle, stop = start_thread_server(data_dir, tiny_dir(MODEL))
    try:
        assert requests.post(f"{handle.url}/v2/jobs", json=TINY).status_code == 401
        (data_dir / KEYS_MARKER).unlink()  # the store's own record still says so
        assert requests.post(f"{handle.url}/v2/jobs", json=TINY).status_code == 401
        assert requests.get(f"{handle.url}/v2/models").status_code == 401
        assert requests.get(f"{handle.url}/health").status_code == 200
        cli = CliRunner().invoke(_cli(), ["keys", "open", "--data", str(data_dir)])  # the deliberate way back
        assert cli.exit_code == 0, cli.output
        assert requests.post(f"{handle.url}/v2/jobs", json=TINY).status_code == 202
    finally:
        stop()


# ---------------------------------------------------------------------------------------------- links, retries


@pytest.fixture(scope="module")
def keyed(tiny_dir, tmp_path_factory):
    handle, tokens, stop = start_keyed_server(tmp_path_factory.mktemp("failclosed-keyed"), tiny_dir(MODEL))
    yield handle, tokens
    stop()


def test_forged_expired_and_long_lived_links_are_refused(keyed):
    server, tokens = keyed
    job = requests.post(f"{server.url}/v2/jobs", json=TINY, headers=tokens["alice"]).json()
    (done,) = wait_for_jobs(server.url, [job["id"]], timeout=120, headers=tokens["alice"])
    link = done["images"][0]["url"]
    base, name = link.split("?")[0], link.split("?")[0].rsplit("/", 1)[1]
    assert requests.get(link).status_code == 200
    secret = server.store.meta("link_secret").encode()  # an attacker who read the secret

    def signed(expires):
        signature = hmac.new(secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{base}?expires={expires}&signature={signature}"

    now = int(time.time())
    for url, why in [
        (signed(now + 3 * YEAR), "longer"),
        (signed(now + 25 * 3600), "longer"),
        (signed(now - 10), "expired"),
        (link.replace("signature=", "signature=0"), "signature"),
        (f"{base}?expires={now + 3 * YEAR}&signature={link.rsplit('=', 1)[1]}", ""),  # expiry edited
        (f"{base}?expires=9{'9' * 5000}&signature=x", ""),
    ]:
        refused = requests.get(url)
        assert refused.status_code == 403 and why in refused.json()["detail"], (url, refused.text)
    assert requests.get(signed(now + 23 * 3600)).status_code == 200
    assert requests.get(base).status_code == 401
    assert requests.get(signed(now + 3 * YEAR), headers=tokens["alice"]).status_code == 200  # the key decides


def test_idempotency_key_returns_the_first_job(keyed):
    server, tokens = keyed
    alice = {**tokens["alice"], "Idempotency-Key": "order-17"}
    first = requests.post(f"{server.url}/v2/jobs", json={**TINY, "seed": 5}, headers=alice)
    assert first.status_code == 202
    again = requests.post(f"{server.url}/v2/jobs", json={**TINY, "seed": 5}, headers=alice)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = requests.post(f"{server.url}/v2/jobs", json={**TINY, "seed": 6}, headers=alice)
    assert other.status_code == 422 and "Idempotency-Key" in other.json()["error"]["message"]
    bob = requests.post(
        f"{server.url}/v2/jobs", json={**TINY, "seed": 5}, headers={**tokens["bob"], "Idempotency-Key": "order-17"}
    )
    assert bob.status_code == 202 and bob.json()["id"] != first.json()["id"]  # keys are per API key
    rows = server.store.db.connection().execute("SELECT COUNT(*) FROM idempotency WHERE key = 'order-17'")
    assert rows.fetchone()[0] == 2  # stored in the database

    # the synchronous APIs too: a retried Segmind call gets the first call's image, not a second job
    segmind = {"prompt": "p", "img_width": 64, "img_height": 64, "num_inference_steps": 2, "base64": True}
    headers = {**tokens["alice"], "Idempotency-Key": "seg-1"}
    before = server.store.count(("queued", "running", "succeeded", "failed", "cancelled"))
    one = requests.post(f"{server.url}/v1/{MODEL}", json=segmind, headers=headers)
    two = requests.post(f"{server.url}/v1/{MODEL}", json=segmind, headers=headers)
    assert one.status_code == two.status_code == 200
    assert one.json()["image"] == two.json()["image"] and one.headers["x-seed"] == two.headers["x-seed"]
    assert server.store.count(("queued", "running", "succeeded", "failed", "cancelled")) == before + 1


# ---------------------------------------------------------------------------------------------- Redis outage


def _redis(binary, port, tmp_path):
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return subprocess.Popen([*command, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)


def _pings(url) -> bool:
    from redis import Redis

    try:
        return Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return False


def test_redis_down_still_accepts_jobs_and_they_run_when_it_is_back(tiny_dir, tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server)")
    pytest.importorskip("rq", reason="rq is not installed (pip install '.[serve]')")
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis = _redis(binary, port, tmp_path)
    wait_until(lambda: _pings(url), 30, "redis-server to start")
    data_dir, model = tmp_path / "shared", tiny_dir(MODEL)
    worker = spawn_ssdxl(["worker", "--redis", url, "--model", f"{MODEL}={model}"], data_dir, tmp_path / "worker.log")
    server, base = spawn_server(data_dir, model, "--redis", url, log=tmp_path / "server.log")
    try:
        first = requests.post(f"{base}/v2/jobs", json={**TINY, "seed": 1}).json()["id"]
        wait_for_jobs(base, [first], timeout=180)  # the worker is up and running jobs
        redis.terminate()
        redis.wait(timeout=10)
        started = time.monotonic()
        accepted = [requests.post(f"{base}/v2/jobs", json={**TINY, "seed": 2 + i}, timeout=30) for i in range(2)]
        assert [r.status_code for r in accepted] == [202, 202], [r.text for r in accepted]
        assert time.monotonic() - started < 10
        ids = [r.json()["id"] for r in accepted]
        assert [requests.get(f"{base}/v2/jobs/{i}").json()["status"] for i in ids] == ["queued", "queued"]
        redis = _redis(binary, port, tmp_path)  # back, empty: the server re-sends the wake-up
        wait_until(lambda: _pings(url), 30, "redis-server to restart")
        jobs = wait_for_jobs(base, ids, timeout=180)
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    finally:
        for process in (server, worker):
            stop_process(process)
        redis.terminate()
        redis.wait(timeout=10)
    assert "Redis is unreachable" in (tmp_path / "server.log").read_text()
