"""Who runs the jobs: a runner thread inside the server, or ``ssdxl worker`` processes via RQ on Redis.

Either way the store decides who runs what (claims are atomic), so a dispatcher only has to wake
runners up. Both also sweep the store every ``poll`` seconds: jobs whose runner died go back in
the queue (``JobStore.recover``), and jobs submitted by another server process get noticed.
"""

from __future__ import annotations

import logging
import threading
import time

from ssdxl.server.runner import Runner
from ssdxl.server.store import QUEUED, JobStore

log = logging.getLogger("ssdxl.server")

RQ_QUEUE = "ssdxl"
RQ_DRAIN = "ssdxl.server.dispatch.drain"  # RQ calls jobs by import path


class LocalDispatch:
    """Jobs run in this process, in one thread (the engine is not re-entrant)."""

    def __init__(self, store: JobStore, runner: Runner, *, poll: float = 1.0, batch_wait: float = 0.05):
        self.store = store
        self.runner = runner
        self.poll = poll
        self.batch_wait = batch_wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ssdxl-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self.poll)
            self._wake.clear()
            try:
                self.store.recover()
                if woken:
                    time.sleep(self.batch_wait)  # let requests that arrive together run as one batch
                while not self._stop.is_set() and self.runner.run_next():
                    pass
            except Exception:
                log.exception("runner loop error; retrying in %.1f s", self.poll)


class RedisDispatch:
    """Jobs run in ``ssdxl worker`` processes: each submitted job sends one "drain the store" message."""

    def __init__(self, store: JobStore, redis_url: str, *, poll: float = 1.0):
        from redis import Redis
        from rq import Queue

        self.store = store
        self.queue = Queue(RQ_QUEUE, connection=Redis.from_url(redis_url))
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sweep, name="ssdxl-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self.queue.enqueue(RQ_DRAIN, job_timeout=-1, result_ttl=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _sweep(self) -> None:
        """Requeue jobs of dead workers and make sure queued jobs have a message to wake a worker."""
        while not self._stop.wait(self.poll):
            try:
                recovered = self.store.recover()
                if recovered or (self.queue.count == 0 and self.store.count((QUEUED,))):
                    self.notify()
            except Exception:
                log.exception("sweeper error; retrying in %.1f s", self.poll)


_worker_runner: Runner | None = None


def drain() -> int:
    """The RQ job: run queued jobs until none is left for this worker's models."""
    if _worker_runner is None:
        raise RuntimeError("drain() runs inside `ssdxl worker`, which sets up its runner first")
    _worker_runner.store.recover()
    return _worker_runner.drain()


def run_worker(runner: Runner, redis_url: str, *, burst: bool = False) -> None:
    """Work RQ messages in this process (``SimpleWorker``: no fork, so loaded models stay loaded)."""
    global _worker_runner
    from redis import Redis
    from rq import Queue, SimpleWorker

    _worker_runner = runner
    connection = Redis.from_url(redis_url)
    SimpleWorker([Queue(RQ_QUEUE, connection=connection)], connection=connection).work(burst=burst)
