"""The job store on PostgreSQL: servers and workers on machines that share no disk run one queue.

``PostgresDatabase`` offers what the store, the keys and the image table ask of SQLite's ``Database``
(``db.py``): a connection per thread, transactions, the same ``?``-placeholder SQL and rows read by
column name. Claims and recovery lock the rows they look at (``skip_locked``: ``FOR UPDATE SKIP
LOCKED``), so runners on many machines never take the same job and never wait on each other.

PostgreSQL may restart or fail over under a running server. A statement outside a transaction
(reads) and the ``BEGIN`` of a transaction wait for it, reconnecting with backoff, for up to
``outage`` seconds; a transaction cut off after it began raises ``StoreUnavailable`` (its outcome
unknown to the caller, who decides: a request answers 503, a runner checks what its ``finish``
did). Either way nothing is half-written: a transaction commits whole or not at all.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from ssdxl.server.db import OUR_TABLES, SCHEMA_VERSION, StoreUnavailable

log = logging.getLogger("ssdxl.server")
T = TypeVar("T")

SCHEMES = ("postgresql://", "postgres://")
OUTAGE = 30.0  # seconds a statement waits for PostgreSQL to come back before StoreUnavailable
# TCP keepalives and a user timeout: a server that vanished without a reset (failover, partition) is noticed in ~15 s
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 15000
# a refusal that is about the server's state, not the settings: worth waiting for
PASSING_REFUSALS = ("starting up", "shutting down", "in recovery", "too many clients", "not yet accepting")
_TYPES = (  # SQLite's column types as PostgreSQL spells them (the schemas are written once, for both)
    (re.compile(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b"), "BIGSERIAL PRIMARY KEY"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.startswith(SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password (in the user part, up to the last ``@``, or as ``password=``), for messages and
    logs; never raises (libpq's multi-host URLs are not what ``urlsplit`` takes)."""
    text = re.sub(r"(?<=://)([^:/@]*):.*@", r"\1:***@", url)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", text)


def pg_schema(schema: str) -> str:
    for pattern, replacement in _TYPES:
        schema = pattern.sub(replacement, schema)
    return schema


def pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Statements:
    """What store code calls on a connection: ``execute`` and ``executemany`` with ``?`` placeholders."""

    def __init__(self, run: Callable[[Callable[[Any], T]], T]):
        self._run = run

    def execute(self, sql: str, args: Sequence[Any] = ()):
        return self._run(lambda conn: conn.execute(pg_sql(sql), tuple(args)))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]):
        def many(conn):
            cursor = conn.cursor()
            cursor.executemany(pg_sql(sql), [tuple(row) for row in rows])
            return cursor

        return self._run(many)


class PostgresDatabase:
    skip_locked = " FOR UPDATE SKIP LOCKED"
    folder = None  # nothing on local disk: the store, its images and its settings all live in PostgreSQL

    def __init__(self, url: str, *, outage: float | None = None, connect_timeout: float = 5.0):
        import psycopg  # the [serve] extra; imported here so SQLite-only installs never need it

        self.url = url
        self.name = redacted(url)
        self.outage = OUTAGE if outage is None else outage
        self.connect_timeout = connect_timeout
        self._psycopg = psycopg
        self._local = threading.local()

    def __str__(self) -> str:
        return self.name

    # ------------------------------------------------------------------ the interface store code uses

    def create(self, schema: str) -> None:
        """Create what does not exist yet; concurrent first starts of several servers are serialised by a lock."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(7126)")  # any constant: ssdxl's schema lock
            conn.execute(pg_schema(schema))

    def connection(self) -> _Statements:
        """Statements run on their own (autocommit); each waits out a short outage."""
        return _Statements(self._retrying)

    @contextmanager
    def transaction(self) -> Iterator[_Statements]:
        conn = self._retrying(lambda c: (c.execute("BEGIN"), c)[1])
        try:
            yield _Statements(lambda run: self._in_transaction(conn, run))
        except BaseException:
            if not conn.closed:
                try:
                    conn.execute("ROLLBACK")
                except self._psycopg.Error:
                    self._drop()
            raise
        self._in_transaction(conn, lambda c: c.execute("COMMIT"))

    def columns(self, table: str) -> set[str]:
        sql = (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = current_schema()"
        )
        return {row["column_name"] for row in self.connection().execute(sql, (table,))}

    def checkpoint(self) -> bool:
        return True  # PostgreSQL keeps its own WAL; a clean stop has nothing to fold in

    def restrict(self) -> None:
        """Nothing local to protect: access to the store is PostgreSQL's roles."""

    def problem(self) -> str | None:
        """Why this database is not a usable store (None: it is, or it holds none of our tables yet)."""
        try:
            tables = {
                row["table_name"]
                for row in self.connection().execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                )
            }
            if "meta" in tables:
                row = self.connection().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and (not str(row["value"]).isdigit() or int(row["value"]) > SCHEMA_VERSION):
                    return f"has schema version {row['value']}, newer than this ssdxl's {SCHEMA_VERSION}: upgrade ssdxl"
            if "jobs" in tables and not tables >= {"jobs", "meta"}:
                return f"holds some of ssdxl's tables but not all ({', '.join(sorted(tables & OUR_TABLES))})"
        except StoreUnavailable as exc:
            return f"cannot be reached ({exc})"
        return None

    def is_empty(self) -> bool:
        return False  # never "missing": a PostgreSQL store is checked by ``problem`` alone

    def close(self) -> None:
        self._drop()

    # ------------------------------------------------------------------ connections, outages

    def _connect(self):
        conn = self._psycopg.connect(
            self.url,
            autocommit=True,
            row_factory=self._psycopg.rows.dict_row,
            connect_timeout=self.connect_timeout,
            tcp_user_timeout=TCP_USER_TIMEOUT_MS,
            **KEEPALIVE,
        )
        self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with suppress(Exception):
                conn.close()

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection (or the server) went away, rather than a fault of the statement."""
        errors = self._psycopg.errors
        if isinstance(exc, (errors.AdminShutdown, errors.CannotConnectNow, errors.CrashShutdown)):
            return True
        if not isinstance(exc, (self._psycopg.OperationalError, self._psycopg.InterfaceError)):
            return False
        conn = getattr(self._local, "conn", None)
        if conn is None and _refused(exc):
            return False  # the server answered and said no (a wrong password, no such database): no outage to wait out
        return conn is None or conn.closed or conn.broken

    def _retrying(self, run: Callable[[Any], T]) -> T:
        """``run(connection)`` on this thread's connection, reconnecting with backoff while PostgreSQL is away."""
        deadline, wait, warned = time.monotonic() + self.outage, 0.1, False
        while True:
            try:
                conn = getattr(self._local, "conn", None)
                if conn is None or conn.closed:
                    conn = self._connect()
                return run(conn)
            except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
                if not self._lost(exc):
                    if getattr(self._local, "conn", None) is None:  # could not connect: the settings are wrong
                        raise StoreUnavailable(f"PostgreSQL at {self.name} refused: {_one_line(exc)}") from exc
                    raise
                self._drop()
                if time.monotonic() + wait > deadline:
                    raise StoreUnavailable(f"PostgreSQL at {self.name} is unreachable: {_one_line(exc)}") from exc
                if not warned:
                    log.warning("PostgreSQL at %s is unreachable (%s); retrying", self.name, _one_line(exc))
                    warned = True
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    def _in_transaction(self, conn, run: Callable[[Any], T]) -> T:
        try:
            return run(conn)
        except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
            if not self._lost(exc):
                raise
            self._drop()
            raise StoreUnavailable(
                f"PostgreSQL at {self.name} went away during a transaction: {_one_line(exc)}"
            ) from exc


def _refused(exc: BaseException) -> bool:
    """A connection attempt the server itself turned down for good (``FATAL:`` from the server, not a passing state)."""
    text = str(exc)
    return "FATAL:" in text and not any(reason in text for reason in PASSING_REFUSALS)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
