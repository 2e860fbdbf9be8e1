"""The server under load: N concurrent clients mixing the four APIs against a real ``ssdxl serve`` process on the
built-in ``shapes`` model at 64x64, with the SQLite store (the default) and/or the PostgreSQL one:

- the native jobs API (``POST /v2/jobs``, then its ``/events`` stream until ``done``),
- Segmind (``POST /v1/shapes``, the image as bytes),
- AUTOMATIC1111 (``POST /sdapi/v1/txt2img``),
- OpenAI (``POST /v1/images/generations``, ``b64_json``).

    python bench/server_load.py --clients 50,200 --write docs/server.md   # about 3 minutes on 2 cores
    python bench/server_load.py --store sqlite,postgresql --postgres postgresql://postgres@127.0.0.1/postgres \
        --write docs/server.md   # both stores; a fresh database per run is made on that server and dropped after

Each run starts a fresh server with an empty data folder, sends one warm-up request through each API (the model
loads), then starts every client at once. A client is a thread with its own ``requests`` session that sends
``--requests-per-client`` requests one after another: client c's request r goes to API (c + r) mod 4, so each API
gets a quarter of the requests, and of the first, second, ... requests alike (with a multiple of 4 clients). Any
non-2xx answer, exception or answer without an image is an error. Reported per run:
latency p50/p95 per API and overall (native: submit to ``done``), images per second over the run's wall time, the
server's RSS after the warm-up, at its peak during the load and after it, the UNet batch sizes the server formed (every
job's ``batch_size``, read from the store once the server has stopped), and the load average before and after.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psutil
import requests

MODEL, SIZE = "shapes", 64
APIS = ("native", "segmind", "a1111", "openai")
STARTUP_TIMEOUT, REQUEST_TIMEOUT = 180.0, 900.0
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = ("navy", "white", "black", "grey")
MIB = 2**20


def prompt(n: int) -> str:
    """A prompt from the built-in model's world; consecutive requests get different ones."""
    return f"a {COLOURS[n % 6]} {SHAPES[n // 6 % 4]} on a {BACKGROUNDS[n // 24 % 4]} background"


class Failure(Exception):
    """An answer that counts as an error: not 2xx, or without an image."""


def _check(response: requests.Response, expected: int = 200) -> Any:
    """The answer's JSON (None for other content types); a ``Failure`` unless its status is ``expected``."""
    if response.status_code != expected:
        raise Failure(f"HTTP {response.status_code}: {response.text[:200]}")
    return response.json() if response.headers.get("content-type", "").startswith("application/json") else None


def native(session: requests.Session, url: str, n: int, steps: int | None) -> None:
    """Submit a job and follow its event stream to ``done``."""
    body = {"prompt": prompt(n), "model": MODEL, "width": SIZE, "height": SIZE, "seed": n}
    job = _check(_post(session, f"{url}/v2/jobs", body | _steps("steps", steps)), 202)
    with session.get(f"{url}/v2/jobs/{job['id']}/events", stream=True, timeout=REQUEST_TIMEOUT) as stream:
        _check(stream)
        event = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif event == "done" and line.startswith("data: "):
                done = json.loads(line.removeprefix("data: "))
                if done["status"] != "succeeded" or not done["images"]:
                    raise Failure(f"job {done['status']}: {done['error']}")
                return
    raise Failure("the event stream ended before done")


def segmind(session: requests.Session, url: str, n: int, steps: int | None) -> None:
    """A synchronous Segmind request; the answer is the JPEG itself."""
    body = {"prompt": prompt(n), "img_width": SIZE, "img_height": SIZE, "seed": n}
    response = _post(session, f"{url}/v1/{MODEL}", body | _steps("num_inference_steps", steps))
    _check(response)
    if not response.content.startswith(b"\xff\xd8"):
        raise Failure(f"not a JPEG: {response.headers.get('content-type')}")


def a1111(session: requests.Session, url: str, n: int, steps: int | None) -> None:
    """A1111 txt2img; the answer holds base64 PNGs."""
    body = {"prompt": prompt(n), "width": SIZE, "height": SIZE, "seed": n}
    answer = _check(_post(session, f"{url}/sdapi/v1/txt2img", body | _steps("steps", steps)))
    if not answer or len(answer["images"]) != 1 or not base64.b64decode(answer["images"][0]):
        raise Failure("no image in the answer")


def openai(session: requests.Session, url: str, n: int, steps: int | None) -> None:
    """OpenAI image generation with ``b64_json`` answers."""
    body = {"model": MODEL, "prompt": prompt(n), "size": f"{SIZE}x{SIZE}", "response_format": "b64_json", "seed": n}
    answer = _check(_post(session, f"{url}/v1/images/generations", body | _steps("steps", steps)))
    if not answer or len(answer["data"]) != 1 or not base64.b64decode(answer["data"][0]["b64_json"]):
        raise Failure("no image in the answer")


CALLS: dict[str, Callable[[requests.Session, str, int, int | None], None]] = {
    "native": native,
    "segmind": segmind,
    "a1111": a1111,
    "openai": openai,
}


def _post(session: requests.Session, url: str, body: dict[str, Any]) -> requests.Response:
    return session.post(url, json=body, timeout=REQUEST_TIMEOUT)


def _steps(field: str, steps: int | None) -> dict[str, int]:
    """The request field for ``--steps``; none when the model's default is wanted."""
    return {} if steps is None else {field: steps}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data: Path, threads: int | None, store: str | None) -> tuple[subprocess.Popen, str, Path]:
    """``ssdxl serve`` on a free port with ``data`` as its folder (and ``store`` as its ``--store``), once
    ``/health`` answers: (process, URL, log)."""
    port, log = free_port(), data / "server.log"
    command = [sys.executable, "-m", "ssdxl.cli.main", "serve", "--port", str(port), "--data", str(data / "store")]
    command += ["--device", "cpu"] + (["--threads", str(threads)] if threads else [])
    command += ["--store", store] if store else []
    with open(log, "ab") as out:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return process, url, log
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> str:
    """SIGTERM (a clean stop checkpoints the store), then SIGKILL after 30 s; how the server ended."""
    if process.poll() is not None:
        return f"had exited by itself (code {process.returncode})"
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return "killed: no exit within 30 s of SIGTERM"
    # uvicorn re-raises the signal once it has shut down, so a clean stop ends "killed by SIGTERM"
    return "stopped cleanly on SIGTERM" if code in (0, -signal.SIGTERM) else f"exit code {code} on SIGTERM"


class RssPeak(threading.Thread):
    """Samples a process's resident set every ``interval`` seconds until stopped; ``peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.process, self.interval, self.peak = psutil.Process(pid), interval, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.halt.wait(self.interval)


def batch_sizes(store_dir: Path, store: str | None, jobs: int) -> list[int]:
    """The ``batch_size`` of the newest ``jobs`` jobs (the load's, not the warm-up's), from the stopped server's
    store."""
    from ssdxl.server.storage import open_database
    from ssdxl.server.store import JobStore

    db = open_database(store_dir, url=store)
    newest = JobStore(db).recent(None, jobs)
    db.close()
    return [job.result["batch_size"] for job in newest if job.result]


@contextlib.contextmanager
def fresh_store(kind: str, admin_url: str | None) -> Iterator[str | None]:
    """None for SQLite (the server's own folder); for PostgreSQL a new database on ``admin_url``'s server, dropped
    afterwards."""
    if kind == "sqlite":
        yield None
        return
    import psycopg

    if not admin_url:
        raise SystemExit("--store postgresql needs --postgres URL: a server where this script may create databases")
    name = f"ssdxl_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def percentiles(values: list[float]) -> dict[str, float]:
    """Count, median and 95th percentile of ``values`` (count only when empty)."""
    if not values:
        return {"n": 0}
    p50, p95 = np.percentile(values, [50, 95])
    return {"n": len(values), "p50": round(float(p50), 3), "p95": round(float(p95), 3)}


def drive(
    url: str, clients: int, per_client: int, steps: int | None
) -> tuple[dict[str, list[float]], list[str], float]:
    """``clients`` threads started together, ``per_client`` requests each: (latencies per API, errors, wall time)."""
    latencies: dict[str, list[float]] = {api: [] for api in APIS}
    errors: list[str] = []
    lock, barrier = threading.Lock(), threading.Barrier(clients)

    def client(c: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            for r in range(per_client):
                api = APIS[(c + r) % len(APIS)]  # each API as often in each position
                start = time.perf_counter()
                try:
                    CALLS[api](session, url, c * per_client + r, steps)
                except Exception as exc:  # every failure is counted, whatever it is
                    with lock:
                        errors.append(f"{api}: {type(exc).__name__}: {exc}"[:300])
                    continue
                with lock:
                    latencies[api].append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies, errors, time.perf_counter() - start


def run(
    clients: int, per_client: int, steps: int | None, threads: int | None, kind: str, admin_url: str | None
) -> dict[str, Any]:
    """One load run on a fresh server and store: ``clients`` threads, ``per_client`` requests each."""
    with (
        tempfile.TemporaryDirectory(prefix="ssdxl-bench-load-") as folder,
        fresh_store(kind, admin_url) as store,
    ):
        process, url, log = start_server(Path(folder), threads, store)
        try:
            server = psutil.Process(process.pid)
            rss_start = server.memory_info().rss
            with requests.Session() as session:  # warm-up: the model loads, each API's path runs once
                for i, api in enumerate(APIS):
                    CALLS[api](session, url, 10_000 + i, steps)
                model_steps = steps or _check(session.get(f"{url}/v2/jobs?limit=1"))[0]["total"]
            rss_before, load_before = server.memory_info().rss, os.getloadavg()
            peak = RssPeak(process.pid)
            peak.start()
            latencies, errors, wall = drive(url, clients, per_client, steps)
            peak.halt.set()
            peak.join()
            rss_after, load_after = server.memory_info().rss, os.getloadavg()
        finally:
            stop = stop_server(process)
        sizes = batch_sizes(Path(folder) / "store", store, clients * per_client)
        log_errors = sum("Traceback" in line or "ERROR" in line for line in log.read_text().splitlines())
    everything = [seconds for api in APIS for seconds in latencies[api]]
    result = {
        "store": kind,
        "clients": clients,
        "requests": clients * per_client,
        "errors": len(errors),
        "error_samples": errors[:5],
        "steps": model_steps,
        "wall_s": round(wall, 2),
        "images": len(everything),
        "images_per_s": round(len(everything) / wall, 2),
        "latency_s": {api: percentiles(latencies[api]) for api in APIS} | {"all": percentiles(everything)},
        "rss_mib": {
            "start": round(rss_start / MIB),
            "before": round(rss_before / MIB),
            "peak": round(max(peak.peak, rss_after) / MIB),
            "after": round(rss_after / MIB),
            "growth": round((rss_after - rss_before) / MIB),
        },
        "load_average": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in load_after]},
        "batch_sizes": dict(sorted(Counter(sizes).items(), reverse=True)),
        "server_stop": stop,
        "server_log_errors": log_errors,
    }
    print(json.dumps(result), flush=True)
    return result


def section(result: dict[str, Any]) -> str:
    """The runs as markdown: settings, machine, then one table of totals, one of latency per API, one of batches."""
    s, m, runs = result["settings"], result["machine"], result["runs"]
    steps = f"{s['steps']} steps (`--steps`)" if s["steps_option"] else f"{s['steps']} steps (the model's default)"
    threads = f"torch threads: {s['threads']}" if s["threads"] else "torch's default threads"
    options = {
        "--store": s["store"] if s["store"] != "sqlite" else None,
        "--postgres": "URL" if "postgresql" in s["store"] else None,
        "--clients": ",".join(dict.fromkeys(str(r["clients"]) for r in runs)),
        "--requests-per-client": s["requests_per_client"],
        "--steps": s["steps"] if s["steps_option"] else None,
        "--threads": s["threads"],
    }
    command = " ".join(["python bench/server_load.py", *(f"{k} {v}" for k, v in options.items() if v is not None)])
    lines = [
        f"`{command}`, {result['date']}: a fresh `ssdxl serve` process, data folder and store per row (CPU, "
        f"{threads}, default max batch), the built-in `{MODEL}` model at {SIZE}x{SIZE}, {steps}. The clients are "
        "threads on the same machine, each with its own `requests` session, all started together after one warm-up "
        f"request through each API; each sends {s['requests_per_client']} requests one after the other, client c's "
        "request r to API (c + r) mod 4, so each API gets a quarter of the requests and of each position: native "
        "`POST /v2/jobs` then its `/events` stream to `done`, Segmind `POST /v1/shapes` (JPEG bytes), A1111 "
        "`POST /sdapi/v1/txt2img`, OpenAI `POST /v1/images/generations` (`b64_json`). An error is any non-2xx "
        "answer, exception or answer without an image. images/s: images over the run's wall time.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; the server and the clients share it"
        + (f", and so does PostgreSQL {s['postgres_version']} (a local server)." if s.get("postgres_version") else "."),
        "",
        "| store | clients | requests | errors | wall s | images/s | latency p50 / p95 s | server RSS MiB: after "
        "warm-up → peak → after (growth) | load average before → after (1/5/15 min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rss, load, all_ = r["rss_mib"], r["load_average"], r["latency_s"]["all"]
        lines.append(
            f"| {r['store']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['wall_s']:.1f} | "
            f"{r['images_per_s']:.2f} | "
            f"{_p(all_)} | {rss['before']} → {rss['peak']} → {rss['after']} ({rss['growth']:+d}) | "
            f"{_load(load['before'])} → {_load(load['after'])} |"
        )
    lines += [
        "",
        "Latency per API, seconds, p50 / p95 (native: from the submit to the `done` event):",
        "",
        "| store | clients | native | Segmind | A1111 | OpenAI |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['store']} | {r['clients']} | " + " | ".join(_p(r["latency_s"][api]) for api in APIS) + " |"
            for r in runs
        ),
        "",
        "UNet batches the server formed (every job's `batch_size`; at most 8 images a batch):",
        "",
        "| store | clients | mean batch size per job | jobs by batch size |",
        "|---|---|---|---|",
        *(
            f"| {r['store']} | {r['clients']} | {_mean(r['batch_sizes']):.1f} | {_sizes(r['batch_sizes'])} |"
            for r in runs
        ),
        "",
        "Server: "
        + "; ".join(
            f"{r['store']}, {r['clients']} clients: {r['server_stop']}, {r['server_log_errors']} error lines in its log"
            for r in runs
        )
        + ".",
    ]
    return "\n".join(lines)


def _postgres_version(admin_url: str) -> str:
    import psycopg

    with psycopg.connect(admin_url) as conn:
        return conn.execute("SHOW server_version").fetchone()[0].split()[0]


def _p(stats: dict[str, float]) -> str:
    return f"{stats['p50']:.2f} / {stats['p95']:.2f}" if stats["n"] else "-"


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def _mean(sizes: dict[int, int]) -> float:
    jobs = sum(sizes.values())
    return sum(size * count for size, count in sizes.items()) / jobs if jobs else 0.0


def _sizes(sizes: dict[int, int]) -> str:
    return ", ".join(f"{size}: {count}" for size, count in sizes.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="50,200", help="comma-separated client counts, one run each")
    parser.add_argument("--requests-per-client", type=int, default=2, help="requests each client sends in turn")
    parser.add_argument("--steps", type=int, help="denoising steps of every request (default: the model's, 20)")
    parser.add_argument("--threads", type=int, help="the server's torch threads (default: torch's own)")
    parser.add_argument(
        "--store", default="sqlite", help="comma-separated stores, each run per client count: sqlite, postgresql"
    )
    parser.add_argument(
        "--postgres",
        help="postgresql://... of a server where databases may be created (--store "
        "postgresql): each run gets a fresh one, dropped after",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--write", type=Path, help="write the markdown into this doc's `load` block")
    args = parser.parse_args()
    from ssdxl.speed.machine import cpu_model

    kinds = [kind.strip() for kind in args.store.split(",")]
    if set(kinds) - {"sqlite", "postgresql"}:
        raise SystemExit(f"--store takes sqlite and/or postgresql, got {args.store!r}")
    runs = [
        run(int(n), args.requests_per_client, args.steps, args.threads, kind, args.postgres)
        for kind in kinds
        for n in args.clients.split(",")
    ]
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "settings": {
            "requests_per_client": args.requests_per_client,
            "steps": runs[0]["steps"],
            "steps_option": args.steps is not None,
            "threads": args.threads,
            "store": ",".join(kinds),
            "postgres_version": _postgres_version(args.postgres) if "postgresql" in kinds else None,
        },
        "runs": runs,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    text = section(result)
    print(text)
    errors = sum(r["errors"] for r in runs)
    if errors:
        raise SystemExit(
            f"{errors} request(s) failed, e.g. {[e for r in runs for e in r['error_samples']][:3]}; no doc written"
        )
    if args.write:
        from ssdxl.speed.report import replace_block

        replace_block(args.write, "load", text)


if __name__ == "__main__":
    main()
