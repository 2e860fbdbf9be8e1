"""One SQLite file shared by the server's threads, its workers and ``ssdxl keys``.

WAL mode lets readers (status polls, progress streams) run while a runner writes; every thread
gets its own connection; writes that read-then-update take the write lock first
(``BEGIN IMMEDIATE``) so two processes never claim the same job. ``synchronous=FULL``: a job
accepted (its transaction committed) survives a killed process and a power cut.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DB_FILE = "ssdxl.db"  # in the server's data folder: jobs, keys and shared settings


class Database:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def create(self, schema: str) -> None:
        """Create tables and indexes that do not exist yet (``CREATE ... IF NOT EXISTS`` statements)."""
        self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

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
