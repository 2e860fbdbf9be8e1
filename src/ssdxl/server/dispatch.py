"""Who runs the jobs: a runner thread inside the server, or ``ssdxl worker`` processes via RQ on Redis.

Either way the store decides who runs what (claims are atomic), so a dispatcher only has to wake
runners up. Both also sweep the store every ``poll`` seconds: jobs whose runner died go back in
the queue (``JobStore.recover``), and jobs submitted by another server process get noticed.

Redis also carries wake-ups the other way: a worker publishes the ids of the jobs it changed (each step, each
result) on ``JOB_EVENTS`` (``RedisNotifier``), and the server's listener hands them to its ``JobNotifier``, so a
request waiting on a worker's job answers as soon as the job is done rather than at its next look at the store.

A wake-up is never a reason to fail a stored job: with Redis down, ``RedisDispatch.notify`` logs a
warning and returns (the job was committed; the client gets its 202), and the sweeper sends a
wake-up for the queued jobs as soon as Redis answers again. Stopping either one (server shutdown,
worker exit) checkpoints the store's WAL into its main file.
"""

from __future__ import annotations

import logging
import threading
import time

from ssdxl.server.db import StoreUnavailable
from ssdxl.server.notify import JobNotifier
from ssdxl.server.runner import Runner
from ssdxl.server.store import QUEUED, JobStore

log = logging.getLogger("ssdxl.server")

RQ_QUEUE = "ssdxl"
JOB_EVENTS = "ssdxl:job-events"  # pub/sub channel: space-separated ids of jobs a worker changed
EVENTS_PAUSE = 10.0  # seconds a worker publishes no job events after Redis failed to take one
RQ_DRAIN = "ssdxl.server.dispatch.drain"  # RQ calls jobs by import path
REDIS_TIMEOUT = 2.0  # seconds the server waits for Redis when it sends a wake-up


def _redis_outage(exc: Exception) -> bool:
    from redis.exceptions import ConnectionError, TimeoutError

    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


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
        self.store.db.checkpoint()

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
            except StoreUnavailable as exc:
                log.warning("%s; retrying in %.1f s", exc, self.poll)
            except Exception:
                log.exception("runner loop error; retrying in %.1f s", self.poll)


class RedisDispatch:
    """Jobs run in ``ssdxl worker`` processes: each submitted job sends one "drain the store" message, and the workers'
    job events wake this process's waiters (``notifier``)."""

    def __init__(self, store: JobStore, redis_url: str, *, poll: float = 1.0, notifier: JobNotifier | None = None):
        from redis import Redis
        from rq import Queue

        self.store = store
        # short timeouts: a request thread that wakes workers must not hang on an unreachable Redis
        connection = Redis.from_url(redis_url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
        self.queue = Queue(RQ_QUEUE, connection=connection)
        self.poll = poll
        self.notifier = notifier or JobNotifier()
        self._down = threading.Event()  # Redis failed: requests skip their wake-up, the sweeper sends it when back
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sweep, name="ssdxl-sweeper", daemon=True)
        self._listener = threading.Thread(target=self._listen, args=(connection,), name="ssdxl-events", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._listener.start()

    def notify(self) -> None:
        """Wake a worker for a stored job; never raises (the sweeper covers a wake-up Redis did not take)."""
        if self._down.is_set():
            return
        try:
            self._send()
        except Exception as exc:  # whatever Redis says, the job is stored: warn, and let the sweeper retry
            self._went_down(exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._listener.join(timeout=5)
        self.store.db.checkpoint()

    def _listen(self, connection) -> None:
        """Wake waiters on the jobs workers report (a lost message only delays a waiter to its next store look)."""
        while not self._stop.is_set():
            try:
                with connection.pubsub(ignore_subscribe_messages=True) as events:
                    events.subscribe(JOB_EVENTS)
                    while not self._stop.is_set():
                        message = events.get_message(timeout=min(self.poll, REDIS_TIMEOUT / 2))
                        if message and message["type"] == "message":
                            self.notifier.changed(message["data"].decode().split())
            except Exception as exc:
                if not _redis_outage(exc):
                    log.exception("job event listener error")
                self._stop.wait(self.poll)

    def _send(self) -> None:
        self.queue.enqueue(RQ_DRAIN, job_timeout=-1, result_ttl=0)

    def _went_down(self, exc: Exception) -> None:
        if not self._down.is_set():
            self._down.set()
            log.warning("Redis is unreachable (%s): jobs are stored and wait for it to come back", exc)

    def _sweep(self) -> None:
        """Requeue jobs of dead workers and make sure queued jobs have a message to wake a worker."""
        while not self._stop.wait(self.poll):
            try:
                recovered = self.store.recover()
                if recovered or (self.queue.count == 0 and self.store.count((QUEUED,))):
                    self._send()
                if self._down.is_set():
                    self._down.clear()
                    log.warning("Redis answers again; queued jobs are being sent to the workers")
            except Exception as exc:
                if _redis_outage(exc):
                    self._went_down(exc)
                elif isinstance(exc, StoreUnavailable):
                    log.warning("%s; retrying in %.1f s", exc, self.poll)
                else:
                    log.exception("sweeper error; retrying in %.1f s", self.poll)


class RedisNotifier(JobNotifier):
    """A worker's notifier: nobody waits on jobs in its process, so it publishes the ids for the servers' listeners."""

    def __init__(self, redis_url: str):
        super().__init__()
        from redis import Redis

        self._redis = Redis.from_url(redis_url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
        self._quiet_until = 0.0

    def changed(self, job_ids) -> None:
        ids = " ".join(job_ids)
        if not ids or time.monotonic() < self._quiet_until:
            return
        try:
            self._redis.publish(JOB_EVENTS, ids)
        except Exception as exc:  # best effort: waiters also look at the store every poll interval
            log.debug("job event not published: %s", exc)
            self._quiet_until = time.monotonic() + EVENTS_PAUSE  # a Redis that is away does not slow every step


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
    try:
        SimpleWorker([Queue(RQ_QUEUE, connection=connection)], connection=connection).work(burst=burst)
    finally:
        runner.store.db.checkpoint()
