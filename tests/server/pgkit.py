"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary folder, started by ``pg_ctl`` on a free
port with trust authentication on 127.0.0.1 only. Tests that need it skip with a reason when PostgreSQL's server
programs are not installed (Debian: ``apt-get install -y postgresql``; ``.ci/run`` installs it).

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user the Debian package makes.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serverkit import free_port


def server_programs() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres (the newest Debian version first), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda f: int(Path(f).parent.name), reverse=True)
    return next((Path(f) for f in folders if (Path(f) / "initdb").exists()), None)


def why_not() -> str | None:
    """Why a test PostgreSQL cannot run here (None: it can)."""
    if server_programs() is None:
        return "PostgreSQL's server programs are not installed (Debian: apt-get install -y postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[serve]')"
    return None


@contextmanager
def running_server() -> Iterator[PostgresServer]:
    """A started throwaway server, removed afterwards; skips the test (with why) where it cannot run."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


class PostgresServer:
    def __init__(self):
        self.bin = server_programs()
        self.root = Path(tempfile.mkdtemp(prefix="ssdxl-pg-"))  # not under pytest's 0700 root-owned folders
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"
        self._as = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._as, str(self.bin / program), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        for attempt in range(20):  # after a kill -9 the old processes may take a moment to let go of the port
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
                return
            except subprocess.CalledProcessError:
                if attempt == 19:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        subprocess.run(
            [*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )

    def kill(self) -> None:
        """kill -9 the postmaster, as a crash would; its backends notice and exit, and the next start recovers."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database on this server; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
