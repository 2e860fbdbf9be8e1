"""Where a job's image files live: a private folder next to the SQLite store, or a table of the PostgreSQL store.

Both hold opaque bytes under names ``storage.Storage`` makes and checks; neither sees a client's name.
Kept in the store's own database on PostgreSQL so that servers and workers on machines that share no
disk read each other's inputs and results, with the store's backups and none of a bucket's
credentials; PNGs of a few hundred KB are well within PostgreSQL's ``bytea``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ssdxl.server.db import StoreUnavailable, private_dir

PUT_TRIES = 3  # writes of one file while the store is away (each waits up to the store's outage time)
FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY,                   -- a name storage.py made: <job id>-<role>.png
    data BLOB NOT NULL,
    created REAL NOT NULL
);
"""


class FolderFiles:
    """Files in a local folder (0700): the embedded SQLite store's ``images/``."""

    def __init__(self, root: Path):
        self.root = root
        private_dir(root)

    def __str__(self) -> str:
        return str(self.root)

    def put(self, name: str, data: bytes) -> None:
        partial = self.root / f".{name}.partial"  # renamed into place: a reader never sees half a file
        partial.write_bytes(data)
        os.replace(partial, self.root / name)

    def get(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, names: list[str]) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def names(self, pattern: re.Pattern) -> list[str]:
        try:
            with os.scandir(self.root) as entries:
                return [entry.name for entry in entries if pattern.match(entry.name)]
        except FileNotFoundError:
            return []


class TableFiles:
    """Files as rows of the store's ``files`` table (PostgreSQL, or any store database)."""

    def __init__(self, db):
        self.db = db
        db.create(FILES_SCHEMA)

    def __str__(self) -> str:
        return f"the files table of {self.db}"

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``; an upsert, so a write cut off by a store outage is simply written again."""
        for attempt in range(PUT_TRIES):
            try:
                with self.db.transaction() as conn:
                    conn.execute(
                        "INSERT INTO files (name, data, created) VALUES (?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET data = excluded.data, created = excluded.created",
                        (name, data, time.time()),
                    )
                return
            except StoreUnavailable:
                if attempt == PUT_TRIES - 1:
                    raise

    def get(self, name: str) -> bytes | None:
        row = self.db.connection().execute("SELECT data FROM files WHERE name = ?", (name,)).fetchone()
        return bytes(row["data"]) if row else None

    def delete(self, names: list[str]) -> None:
        if names:
            with self.db.transaction() as conn:
                conn.executemany("DELETE FROM files WHERE name = ?", [(name,) for name in names])

    def names(self, pattern: re.Pattern) -> list[str]:
        return [
            row["name"] for row in self.db.connection().execute("SELECT name FROM files") if pattern.match(row["name"])
        ]
