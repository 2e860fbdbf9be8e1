"""The job store: every accepted job, its progress and its result, in SQLite.

A job goes ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``. A runner
*claims* queued jobs atomically and holds them under a lease that a heartbeat renews; only the
holder of a live claim may finish a job, so no job completes twice. When a runner dies its
lease runs out (on the same machine: as soon as its process is gone) and ``recover`` queues the
job again, or fails it with a message once it has been cut short ``max_attempts`` times.

A job may be added under an ``Idempotency-Key`` (``IDEMPOTENCY``, set per request by the app): the
same key from the same API key within ``IDEMPOTENCY_TTL`` gives back the job it first made, decided
in the transaction that would add the job, so a retried request never makes a duplicate.

The SQL is written once for SQLite (``db.Database``, the embedded default) and PostgreSQL
(``postgres.PostgresDatabase``, for servers and workers on many machines): ``?`` placeholders,
``ON CONFLICT`` upserts, rows read by column name, and ``db.skip_locked`` after the reads that claim
or recover (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds
the whole store).
"""

from __future__ import annotations

import contextvars
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdxl.server.db import SCHEMA_VERSION, Database

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- arrival order: the queue order
    id TEXT NOT NULL UNIQUE,
    owner INTEGER,                           -- API key id; NULL when the server has no keys
    model TEXT NOT NULL,
    request TEXT NOT NULL,                   -- JSON, images as file names (storage.py)
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,     -- claims so far
    worker TEXT,                             -- host:pid:token of the claim holder
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    preview BLOB,                            -- PNG of the latest previewed step's latents
    result TEXT,                             -- JSON: images (file, seed, infotext), timings, batch size
    error TEXT,
    error_kind TEXT,                         -- "user" (the request's fault) or "server"
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    owner INTEGER NOT NULL,                  -- API key id; -1 when the server has no keys
    key TEXT NOT NULL,                       -- the client's Idempotency-Key (#n for a request's n-th job)
    fingerprint TEXT NOT NULL,               -- sha256 of the request's path and body
    job_id TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (owner, key)
);
"""
IDEMPOTENCY_TTL = 24 * 3600.0  # seconds an Idempotency-Key keeps answering with its job


@dataclass
class IdempotentRequest:
    """The Idempotency-Key of the request being handled (see ``IDEMPOTENCY``)."""

    owner: int | None
    key: str
    fingerprint: str
    jobs: int = field(default=0)  # jobs this request has added so far

    def next_key(self) -> str:
        key = self.key if self.jobs == 0 else f"{self.key}#{self.jobs}"
        self.jobs += 1
        return key


# Set by the app for a request that carries an Idempotency-Key; ``JobStore.add`` honours it.
IDEMPOTENCY: contextvars.ContextVar[IdempotentRequest | None] = contextvars.ContextVar("idempotency", default=None)


@dataclass
class Job:
    id: str
    seq: int
    owner: int | None
    model: str
    request: dict[str, Any]
    status: str
    attempts: int
    worker: str | None
    cancel_requested: bool
    step: int
    total: int
    preview: bytes | None
    result: dict[str, Any] | None
    error: str | None
    error_kind: str | None
    created: float
    started: float | None
    finished: float | None

    @property
    def done(self) -> bool:
        return self.status in FINISHED


def _owner_id(owner: int | None) -> int:
    return -1 if owner is None else owner


def _job(row) -> Job:
    data = dict(row)
    data.pop("lease_until")
    data["request"] = json.loads(data["request"])
    data["result"] = json.loads(data["result"]) if data["result"] else None
    data["cancel_requested"] = bool(data["cancel_requested"])
    return Job(**data)


def _stale(row, now: float) -> bool:
    """A running job's claim is over: its lease ran out, or its holder's process is gone."""
    return row["lease_until"] is None or row["lease_until"] < now or holder_gone(row["worker"])


# Tells this process from an earlier one with the same pid (a restarted container's server is often pid 1 again).
_PROCESS = secrets.token_hex(4)


def _process_space() -> str:
    """This process's host as pids are meaningful in it: the host name, the boot, and the pid namespace (containers
    that share a host name, with ``--network host`` or ``hostNetwork``, each have their own pid 1)."""
    parts = [socket.gethostname()]
    for path, read in (("/proc/sys/kernel/random/boot_id", Path.read_text), ("/proc/self/ns/pid", os.readlink)):
        try:
            parts.append("".join(ch for ch in str(read(Path(path))) if ch.isalnum())[:12])
        except OSError:
            parts.append("")
    return "~".join(parts)


HOST = _process_space()  # the first field of this process's worker ids; holder_gone trusts pids only under it


def worker_id(token: str) -> str:
    """Who holds a claim, as host:pid:process:token, so a restarted server on the same host sees the holder is gone."""
    return f"{HOST}:{os.getpid()}:{_PROCESS}:{token}"


def holder_gone(worker: str) -> bool:
    """True when ``worker`` ran on this host and its process no longer exists (else: unknown, False)."""
    host, pid, process, _ = (worker.split(":") + ["", "", ""])[:4]
    if host != HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return process != _PROCESS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobStore:
    def __init__(self, db: Database, *, max_attempts: int = 3):
        self.db = db
        self.max_attempts = max_attempts
        db.create(SCHEMA)
        self.set_meta("schema_version", str(SCHEMA_VERSION), only_if_missing=True)

    # ------------------------------------------------------------------ clients' side

    def add(self, job_id: str, *, owner: int | None, model: str, request: dict[str, Any]) -> Job:
        """Queue a job; under an Idempotency-Key already used (same owner, last 24 h) return that key's job instead."""
        idempotent, existing = IDEMPOTENCY.get(), False
        now = time.time()
        with self.db.transaction() as conn:
            if idempotent is not None:
                key, owner_id = idempotent.next_key(), _owner_id(idempotent.owner)
                conn.execute("DELETE FROM idempotency WHERE created <= ?", (now - IDEMPOTENCY_TTL,))
                # the key's row is the decision: a concurrent request with the same key waits here for ours
                inserted = conn.execute(
                    "INSERT INTO idempotency (owner, key, fingerprint, job_id, created) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (owner, key) DO NOTHING",
                    (owner_id, key, idempotent.fingerprint, job_id, now),
                ).rowcount
                if not inserted:
                    sql = "SELECT job_id FROM idempotency WHERE owner = ? AND key = ?"
                    job_id, existing = conn.execute(sql, (owner_id, key)).fetchone()["job_id"], True
            if not existing:
                conn.execute(
                    "INSERT INTO jobs (id, owner, model, request, status, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, owner, model, json.dumps(request), QUEUED, now),
                )
        return self.get(job_id)

    def idempotent(self, owner: int | None, key: str) -> tuple[Job, str] | None:
        """The job an Idempotency-Key made (with the request's fingerprint), if it is younger than 24 h."""
        row = (
            self.db.connection()
            .execute(
                "SELECT job_id, fingerprint FROM idempotency WHERE owner = ? AND key = ? AND created > ?",
                (_owner_id(owner), key, time.time() - IDEMPOTENCY_TTL),
            )
            .fetchone()
        )
        job = self.get(row["job_id"]) if row else None
        return (job, row["fingerprint"]) if job else None

    def get(self, job_id: str) -> Job | None:
        row = self.db.connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def position(self, job: Job) -> int:
        """Jobs ahead of a queued job (0 = next); 0 for any other job."""
        if job.status != QUEUED:
            return 0
        sql = "SELECT COUNT(*) AS n FROM jobs WHERE status = ? AND seq < ?"
        return self.db.connection().execute(sql, (QUEUED, job.seq)).fetchone()["n"]

    def recent(self, owner: int | None, limit: int, status: str | None = None) -> list[Job]:
        """The owner's newest jobs first (all jobs when ``owner`` is None)."""
        where, args = ["1 = 1"], []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        return [_job(r) for r in self.db.connection().execute(sql, (*args, limit))]

    def count(self, statuses: tuple[str, ...], owner: int | None = None) -> int:
        """Jobs in any of ``statuses`` (the owner's only, when ``owner`` is given)."""
        sql = f"SELECT COUNT(*) AS n FROM jobs WHERE status IN ({', '.join('?' * len(statuses))})"
        args: tuple = statuses
        if owner is not None:
            sql += " AND owner = ?"
            args += (owner,)
        return self.db.connection().execute(sql, args).fetchone()["n"]

    def cancel(self, job_id: str) -> Job | None:
        """A queued job is cancelled at once; a running one is flagged and its runner stops it at the next step."""
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET status = ?, finished = ?, worker = NULL WHERE id = ? AND status = ?",
                (CANCELLED, time.time(), job_id, QUEUED),
            )
            conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?", (job_id, RUNNING))
        return self.get(job_id)

    # ------------------------------------------------------------------ runners' side

    def queued(self, models: list[str], limit: int) -> list[Job]:
        """The oldest queued jobs for ``models``, without claiming them."""
        marks = ", ".join("?" * len(models))
        sql = f"SELECT * FROM jobs WHERE status = ? AND model IN ({marks}) ORDER BY seq LIMIT ?"
        return [_job(r) for r in self.db.connection().execute(sql, (QUEUED, *models, limit))]

    def claim(self, job_ids: list[str], worker: str, lease: float) -> list[str]:
        """Claim those of ``job_ids`` that are still queued; returns the ids this worker now holds."""
        if not job_ids:
            return []
        now = time.time()
        marks = ", ".join("?" * len(job_ids))
        with self.db.transaction() as conn:
            sql = f"SELECT id FROM jobs WHERE id IN ({marks}) AND status = ?{self.db.skip_locked}"
            free = {row["id"] for row in conn.execute(sql, (*job_ids, QUEUED))}  # rows another runner locks: skipped
            claimed = [job_id for job_id in job_ids if job_id in free]
            conn.executemany(
                "UPDATE jobs SET status = ?, worker = ?, lease_until = ?, attempts = attempts + 1, "
                "started = ?, step = 0, total = 0, preview = NULL WHERE id = ? AND status = ?",
                [(RUNNING, worker, now + lease, now, job_id, QUEUED) for job_id in claimed],
            )
        return claimed

    def release(self, job_ids: list[str], worker: str) -> None:
        """Queue again, uncounted, those of ``job_ids`` that ``worker`` holds but will not run (a claim whose outcome
        the store never confirmed)."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE jobs SET status = ?, worker = NULL, lease_until = NULL, attempts = attempts - 1, "
                "started = NULL WHERE id = ? AND worker = ? AND status = ?",
                [(QUEUED, job_id, worker, RUNNING) for job_id in job_ids],
            )

    def heartbeat(self, worker: str, lease: float, job_ids: list[str]) -> None:
        """Renew the lease of ``job_ids`` (the batch running now), rows locked in id order as ``progress`` locks them:
        two writers of one batch never wait for each other in a cycle."""
        until = time.time() + lease
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND worker = ? AND status = ?",
                [(until, job_id, worker, RUNNING) for job_id in sorted(job_ids)],
            )

    def progress(self, worker: str, updates: list[tuple[str, int, int, bytes | None]]) -> None:
        """(job id, step, total, preview PNG or None to keep the latest) for jobs this worker holds."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE jobs SET step = ?, total = ?, preview = COALESCE(?, preview) "
                "WHERE id = ? AND worker = ? AND status = ?",
                [(step, total, preview, job_id, worker, RUNNING) for job_id, step, total, preview in sorted(updates)],
            )

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        marks = ", ".join("?" * len(job_ids))
        sql = f"SELECT id FROM jobs WHERE id IN ({marks}) AND cancel_requested = 1"
        return {r["id"] for r in self.db.connection().execute(sql, job_ids)}

    def finish(
        self,
        job_id: str,
        worker: str,
        status: str,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_kind: str | None = None,
    ) -> bool:
        """Record the outcome if ``worker`` still holds the job; False means it lost the claim."""
        outcome = (status, json.dumps(result) if result else None, error, error_kind, time.time())
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET status = ?, result = ?, error = ?, error_kind = ?, finished = ?, lease_until = NULL "
                "WHERE id = ? AND worker = ? AND status = ?",
                (*outcome, job_id, worker, RUNNING),
            )
            return cursor.rowcount == 1

    def recover(self) -> list[str]:
        """Queue again (or fail, or cancel) running jobs whose holder is gone or whose lease ran out.

        Every sweeper calls this every second: a plain read finds the stale claims first, and only those are locked
        (and checked again) in a transaction, so a sweep with nothing to do takes no write lock."""
        now = time.time()
        sql = "SELECT id, worker, lease_until FROM jobs WHERE status = ?"
        stale = [row["id"] for row in self.db.connection().execute(sql, (RUNNING,)) if _stale(row, now)]
        if not stale:
            return []
        recovered = []
        with self.db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, worker, lease_until, attempts, cancel_requested FROM jobs "
                f"WHERE id IN ({', '.join('?' * len(stale))}) AND status = ?{self.db.skip_locked}",
                (*stale, RUNNING),
            ).fetchall()
            for row in rows:
                if not _stale(row, now):  # renewed or re-claimed since the read
                    continue
                if row["cancel_requested"]:
                    update = (CANCELLED, None, None, now)
                elif row["attempts"] >= self.max_attempts:
                    message = f"the process running this job stopped {row['attempts']} times; giving up"
                    update = (FAILED, message, "server", now)
                else:
                    update = (QUEUED, None, None, None)
                conn.execute(
                    "UPDATE jobs SET status = ?, error = ?, error_kind = ?, finished = ?, worker = NULL, "
                    "lease_until = NULL WHERE id = ? AND status = ?",
                    (*update, row["id"], RUNNING),
                )
                recovered.append(row["id"])
        return recovered

    # ------------------------------------------------------------------ settings shared by processes

    def meta(self, key: str) -> str | None:
        row = self.db.connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else None

    def set_meta(self, key: str, value: str, *, only_if_missing: bool = False) -> str:
        """Store ``value`` (or keep the existing one with ``only_if_missing``); returns what is stored."""
        on_conflict = "NOTHING" if only_if_missing else "UPDATE SET value = excluded.value"
        with self.db.transaction() as conn:
            conn.execute(
                f"INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO {on_conflict}", (key, value)
            )
        return self.meta(key)
