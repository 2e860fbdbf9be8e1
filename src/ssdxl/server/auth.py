"""API keys and per-key rate limits.

A key is a random token shown once when it is made (``ssdxl keys add``); the store keeps only its
SHA-256, so a copied database reveals no key. While at least one key exists, every request except
``/health`` needs one (401 otherwise), sent the way its client's API sends keys: ``x-api-key``
(Segmind), ``Authorization: Bearer`` (OpenAI) or HTTP Basic with the key as password
(AUTOMATIC1111's ``--api-auth``, e.g. webuiapi's username/password; browsers ask for it on the
web page). Signed result links (``storage.Storage.sign``) are the one way in without a key; a link
that is forged, expired or promises more than the server's link lifetime is refused (403).

Keys fail closed: the first key ever added records that this store wants keys, in the store's
``meta`` table and in a marker file next to it (``keys-required``). While either says so, a server
whose keys are gone (rows deleted, a store lost or reset) refuses every request (401) instead of
opening up; ``ssdxl keys open`` is the deliberate way back to a server without keys.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ssdxl.errors import UserError
from ssdxl.server.db import PRIVATE_FILE, Database
from ssdxl.server.errors import error_response
from ssdxl.server.storage import Storage

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,               -- sha256 of the key; the key itself is never stored
    rate_per_min REAL,                       -- NULL: unlimited
    created REAL NOT NULL,
    burst REAL                               -- jobs at once: the count of --rate (2 for 2/s); NULL: rate_per_min
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
KEY_PREFIX = "sk-ssdxl-"
FILE_PATH = re.compile(r"^/v2/files/([^/]+)$")
KEYS_MARKER = "keys-required"  # next to the store: keys were configured, so a store without keys is not open
KEYS_META = "keys_required"

log = logging.getLogger("ssdxl.server")


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    rate_per_min: float | None
    created: float
    burst: float | None = None  # the bucket's size: 2 for --rate 2/s, 60 for 60/min


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_burst(text: str) -> float:
    """How many jobs a ``--rate`` lets through at once: its count in its own unit (``"2/s"``: 2)."""
    parse_rate(text)
    return float(text.strip().partition("/")[0])


def parse_rate(text: str) -> float:
    """``"60"``, ``"60/min"``, ``"2/s"`` or ``"600/h"`` as requests per minute."""
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "m": 1.0, "min": 1.0, "s": 60.0, "sec": 60.0, "h": 1 / 60, "hour": 1 / 60}.get(unit.strip())
    try:
        rate = float(number) * per if per is not None else -1.0
    except ValueError:
        rate = -1.0
    if rate <= 0:
        raise UserError(f"--rate must look like 60/min, 2/s or 600/h; got {text!r}")
    return rate


class KeyStore:
    def __init__(self, db: Database):
        self.db = db
        self.marker = db.folder / KEYS_MARKER if db.folder is not None else None  # PostgreSQL: its meta row alone
        db.create(SCHEMA)
        if "burst" not in db.columns("api_keys"):  # stores made before bursts were recorded
            with db.transaction() as conn:
                conn.execute("ALTER TABLE api_keys ADD COLUMN burst REAL")
        if self.any():  # a store whose keys predate the record
            self._require()

    def add(self, name: str, rate_per_min: float | None = None, burst: float | None = None) -> tuple[ApiKey, str]:
        """A new key and its token; the token cannot be recovered later."""
        self._require()  # recorded first: a crash after this point still leaves the server closed
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO api_keys (name, hash, rate_per_min, created, burst) VALUES (?, ?, ?, ?, ?)",
                (name, _hash(token), rate_per_min, time.time(), burst),
            )  # the new id read back by its unique hash: no RETURNING, which SQLite only has since 3.35
            key_id = conn.execute("SELECT id FROM api_keys WHERE hash = ?", (_hash(token),)).fetchone()["id"]
        return ApiKey(key_id, name, rate_per_min, time.time(), burst), token

    def list(self) -> list[ApiKey]:
        rows = self.db.connection().execute("SELECT id, name, rate_per_min, created, burst FROM api_keys ORDER BY id")
        return [ApiKey(**dict(row)) for row in rows]

    def remove(self, id_or_name: str) -> int:
        """Remove the key with this id, or every key with this name; returns how many went."""
        column = "id" if id_or_name.isdigit() else "name"
        with self.db.transaction() as conn:
            return conn.execute(f"DELETE FROM api_keys WHERE {column} = ?", (id_or_name,)).rowcount

    def any(self) -> bool:
        return self.db.connection().execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def required(self) -> bool:
        """True once keys were configured for this store (the marker file or the store's record says so)."""
        if self.marker is not None and self.marker.exists():
            return True
        row = self.db.connection().execute("SELECT 1 FROM meta WHERE key = ?", (KEYS_META,)).fetchone()
        return row is not None

    def open_up(self) -> None:
        """Forget that keys were configured, so the server answers without keys (only once none is left)."""
        if self.any():
            raise UserError("keys still exist: remove them first (ssdxl keys list / remove)")
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (KEYS_META,))
        if self.marker is not None:
            self.marker.unlink(missing_ok=True)

    def _require(self) -> None:
        if self.marker is not None and not self.marker.exists():
            fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(fd, "w") as out:
                out.write(
                    "API keys were configured for the job store in this folder: while this file exists, every request\n"
                    "needs a key, even if the store has lost its keys. `ssdxl keys open` removes it.\n"
                )
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (KEYS_META, str(time.time())),
            )

    def lookup(self, token: str) -> ApiKey | None:
        sql = "SELECT id, name, rate_per_min, created, burst FROM api_keys WHERE hash = ?"
        row = self.db.connection().execute(sql, (_hash(token),)).fetchone()
        return ApiKey(**dict(row)) if row else None


class RateLimiter:
    """A token bucket per key: ``rate_per_min`` jobs a minute, bursts up to the rate's own count (``burst``:
    2 for 2/s, 60 for 60/min), so a per-second rate never lets a minute's worth through at once.

    Kept in memory, so each server process limits on its own.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, tuple[float, float]] = {}  # key id -> (tokens, time)
        self._lock = threading.Lock()

    def retry_after(self, key: ApiKey | None) -> float | None:
        """Take one token; None if allowed, else seconds until the next one."""
        if key is None or key.rate_per_min is None:
            return None
        capacity, per_second = max(1.0, key.burst or key.rate_per_min), key.rate_per_min / 60.0
        with self._lock:
            now = time.monotonic()
            tokens, then = self._buckets.get(key.id, (capacity, now))
            tokens = min(capacity, tokens + (now - then) * per_second)
            if tokens < 1.0:
                self._buckets[key.id] = (tokens, now)
                return (1.0 - tokens) / per_second
            self._buckets[key.id] = (tokens - 1.0, now)
            return None


def request_key(request: Request) -> ApiKey | None:
    """The caller's key (set by ``AuthMiddleware``); None when the server has no keys."""
    return request.scope.get("state", {}).get("api_key")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyStore, storage: Storage):
        self.app = app
        self.keys = keys
        self.storage = storage

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        request = Request(scope)
        keyed, key = await run_in_threadpool(self._caller, request)
        if key is None:
            link = self._link_problem(request)
            if link:  # a link was shown and is not good: refused, key or no key on this server
                return await error_response(403, link)(scope, receive, send)
            if keyed and link is None:
                message = "a valid API key is required: send it as x-api-key, Authorization: Bearer, or Basic password"
                headers = {"WWW-Authenticate": 'Basic realm="ssdxl"'}
                return await error_response(401, message, headers=headers)(scope, receive, send)
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    def _caller(self, request: Request) -> tuple[bool, ApiKey | None]:
        """(whether this server wants keys, the request's valid key): store reads, so run off the event loop."""
        keyed = self.keys.any() or self.keys.required()
        token = _token(request) if keyed else None
        return keyed, self.keys.lookup(token) if token else None

    def _link_problem(self, request: Request) -> str | None:
        """For a result file with link parameters: why the link is refused, or "" when it is good; else None."""
        match = FILE_PATH.match(request.url.path)
        query = request.query_params
        if not match or ("expires" not in query and "signature" not in query):
            return None
        return self.storage.link_problem(match[1], query.get("expires", ""), query.get("signature", "")) or ""


def _token(request: Request) -> str | None:
    headers = request.headers
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value).decode().partition(":")[2]
        except ValueError:
            return None
    return None
