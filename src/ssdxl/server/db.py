"""One SQLite file shared by the server's threads, its workers and ``ssdxl keys``.

WAL mode lets readers (status polls, progress streams) run while a runner writes; every thread
gets its own connection; writes that read-then-update take the write lock first
(``BEGIN IMMEDIATE``) so two processes never claim the same job. ``synchronous=FULL``: a job
accepted (its transaction committed) survives a killed process and a power cut.

The file, its ``-wal`` and ``-shm`` hold the link-signing secret, so they are the owner's alone
(0600, set when made and again on every open). ``problem`` says whether an existing file is a
usable store (``PRAGMA quick_check``, a known schema version) before anything writes to it, and a
clean shutdown ``checkpoint``\\ s the WAL into the main file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssdxl.errors import UserError

DB_FILE = "ssdxl.db"  # in the server's data folder: jobs, keys and shared settings
SCHEMA_VERSION = 1  # recorded in meta as "schema_version"; a store from a newer ssdxl is refused
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
SIDE_FILES = ("-wal", "-shm", "-journal")
OUR_TABLES = {"jobs", "api_keys", "meta", "idempotency"}

log = logging.getLogger("ssdxl.server")


class StoreDamaged(UserError):
    """The job store cannot be used as it is; the message names the file and the ways out."""


class StoreUnavailable(Exception):
    """The job store's server cannot be reached for now (PostgreSQL restarting): HTTP 503, runners retry later."""


def private_dir(path: Path) -> None:
    """Make ``path`` (and missing parents) a folder only its owner can read."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    restrict(path, PRIVATE_DIR)


def restrict(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` if it exists and is ours (a file we cannot chmod is left to its owner)."""
    try:
        if os.stat(path).st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except (FileNotFoundError, PermissionError):
        pass


class Database:
    skip_locked = ""  # BEGIN IMMEDIATE already makes a claim's read-then-update exclusive

    def __init__(self, path: Path):
        self.path = path
        self.name = str(path)
        if not path.parent.exists():
            private_dir(path.parent)
        self._local = threading.local()

    def create(self, schema: str) -> None:
        """Create tables and indexes that do not exist yet (``CREATE ... IF NOT EXISTS`` statements)."""
        self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():  # SQLite gives -wal and -shm the main file's mode
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            self.restrict()
        return conn

    def __str__(self) -> str:
        return self.name

    @property
    def folder(self) -> Path:
        """The local folder the store lives in (its keys marker goes next to it)."""
        return self.path.parent

    def columns(self, table: str) -> set[str]:
        return {row["name"] for row in self.connection().execute(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def restrict(self) -> None:
        """The store's files (main, -wal, -shm) readable by their owner only."""
        for suffix in ("", *SIDE_FILES):
            restrict(self.path.with_name(self.path.name + suffix), PRIVATE_FILE)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file and empty it (a clean stop leaves every job in ``ssdxl.db``).

        False (and a warning) when a reader or writer of another process kept it from finishing."""
        try:
            busy, _, _ = self.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("could not checkpoint %s: %s", self.path, exc)
            return False
        if busy:
            log.warning("%s-wal still holds changes: another process is using the store", self.path)
        return not busy

    def problem(self) -> str | None:
        """Why the existing file is not a usable store (None: it is, or it is new/empty).

        Reads only: opens the file, runs ``PRAGMA quick_check`` and reads the recorded schema version.
        """
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=rw", uri=True, timeout=30.0)
        except sqlite3.Error as exc:
            return f"cannot be opened ({exc})"
        try:
            checked = [" ".join(str(row[0]).split()) for row in conn.execute("PRAGMA quick_check(3)")]
            if checked != ["ok"]:
                return f"failed its integrity check ({'; '.join(checked)})"  # one line: messages may hold newlines
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not tables & OUR_TABLES:
                return f"is not an ssdxl job store (tables: {', '.join(sorted(tables))})"
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is not None and (not str(row[0]).isdigit() or int(row[0]) > SCHEMA_VERSION):
                    return f"has schema version {row[0]}, newer than this ssdxl's {SCHEMA_VERSION}: upgrade ssdxl"
        except sqlite3.Error as exc:
            return f"is damaged ({' '.join(str(exc).split())})"
        finally:
            conn.close()
        return None

    def is_empty(self) -> bool:
        """True when the file is missing or holds no table (a store that was never written)."""
        if not self.path.exists():
            return True
        if self.path.stat().st_size == 0 and not _has_content(self.path.with_name(self.path.name + "-wal")):
            return True
        try:
            conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30.0)
            try:
                return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
            finally:
                conn.close()
        except sqlite3.Error:
            return False


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
