"""What a job keeps besides its row: its input images and its result images (``files.py``: a folder next to the
SQLite store, or the PostgreSQL store's ``files`` table).

A request is stored as JSON with its images replaced by file names; results are PNGs carrying the
same infotext and parameters ``ssdxl generate`` writes, except that adapter files appear by name,
not by the server's paths. Every file name is made here (job id, then ``init``/``mask``,
``control<k>`` for the k-th control unit's map, or attempt and index) and checked against one
pattern before it is served, so no name a client sends reaches the filesystem. Result links can be signed (HMAC, with an
expiry no further ahead than the server's link lifetime, 24 h by default) for clients that fetch
them without a key, such as an OpenAI client following a ``url``.

``open_data`` opens the store fail-closed: a damaged store, one from a newer ssdxl, a missing
store next to job files, or result files of jobs the store does not know (a lost WAL) stop the
server and its workers with a one-line ``StoreDamaged``; ``reset=True`` (``ssdxl serve
--reset-store``) moves such a store aside as ``ssdxl.db.broken-<timestamp>`` and starts an empty
one. Files are private to their owner: the store 0600 (it holds the link secret), images in a 0700
folder. With ``--store postgresql://…`` the database holds everything and is checked the same way (a
schema from a newer ssdxl, half our tables) without being moved aside.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ssdxl.control.models import SUFFIXES as CONTROL_SUFFIXES
from ssdxl.output.files import png_bytes
from ssdxl.sampling.request import RECORDS, ControlUnit, GeneratedImage, GenerationRequest, Hires, ImagePrompt
from ssdxl.server.config import ServerConfig
from ssdxl.server.db import DB_FILE, SIDE_FILES, Database, StoreDamaged
from ssdxl.server.files import FolderFiles, TableFiles
from ssdxl.server.postgres import PostgresDatabase, is_postgres
from ssdxl.server.store import JobStore

FILE_NAME = re.compile(r"^[0-9a-f]{32}-(init|mask|control\d+|ip\d+-\d+|a\d+-\d+)\.png$")
RESULT_NAME = re.compile(r"^([0-9a-f]{32})-a\d+-\d+\.png$")
IMAGES = "images"  # the data folder's image files
LINK_TTL = 24 * 3600.0  # default lifetime (and ceiling) of signed links
CLOCK_SLACK = 60.0  # seconds a link's expiry may exceed the ceiling (servers' clocks differ a little)
_TUPLES = ("original_size", "target_size", "crop_top_left", "outpaint")

log = logging.getLogger("ssdxl.server")


class Storage:
    def __init__(self, files: FolderFiles | TableFiles, secret: str, *, max_ttl: float = LINK_TTL):
        self.files = files
        self.secret = secret.encode()
        self.max_ttl = max_ttl

    # ------------------------------------------------------------------ requests

    def save_request(self, job_id: str, request: GenerationRequest) -> dict[str, Any]:
        """The request as JSON-ready data; its images (init, mask, control maps, image prompts) are written as PNG
        files."""
        record = request.to_params()
        record["init_image"] = self._save(request.init_image, f"{job_id}-init.png", "RGB")
        record["mask_image"] = self._save(request.mask_image, f"{job_id}-mask.png", "L")
        for k, (unit, stored) in enumerate(zip(request.controls, record["controls"], strict=True)):
            stored["image"] = self._save(unit.image, f"{job_id}-control{k}.png")  # its own mode: alpha matters
        for k, (prompt, stored) in enumerate(zip(request.image_prompts, record["image_prompts"], strict=True)):
            stored["images"] = [self._save(image, f"{job_id}-ip{k}-{i}.png") for i, image in enumerate(prompt.images)]
        return record

    def load_request(self, record: dict[str, Any]) -> GenerationRequest:
        known = {f.name for f in dataclasses.fields(GenerationRequest)}  # a newer ssdxl's fields: left to it
        fields = {key: value for key, value in record.items() if key in known and key not in RECORDS}
        for key in _TUPLES:
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        for key in ("init_image", "mask_image"):
            fields[key] = self._load(fields.get(key))
        units = record.get("controls", [])
        fields["controls"] = [ControlUnit(**{**unit, "image": self._load(unit["image"])}) for unit in units]
        prompts = record.get("image_prompts", [])
        fields["image_prompts"] = [
            ImagePrompt(**{**prompt, "images": [self._load(name) for name in prompt["images"]]}) for prompt in prompts
        ]
        fields["hires"] = Hires(**record["hires"]) if record.get("hires") else None
        return GenerationRequest(**fields)

    def _save(self, image: Image.Image | None, name: str, mode: str | None = None) -> str | None:
        if image is None:
            return None
        out = io.BytesIO()
        (image.convert(mode) if mode else image).save(out, format="PNG")
        self.files.put(self.check(name), out.getvalue())
        return name

    def _load(self, name: str | None) -> Image.Image | None:
        if not name:
            return None
        data = self.read(name)
        if data is None:
            raise FileNotFoundError(f"stored image {name} is missing")
        with Image.open(io.BytesIO(data)) as image:
            return image.copy()

    # ------------------------------------------------------------------ results

    def save_results(self, job_id: str, attempt: int, images: list[GeneratedImage]) -> list[dict[str, Any]]:
        """Write one attempt's images; names carry the attempt so a lost claim never overwrites a winner's."""
        saved = []
        for i, generated in enumerate(images):
            name = f"{job_id}-a{attempt}-{i}.png"
            self.files.put(name, png_bytes(dataclasses.replace(generated, params=_without_paths(generated.params))))
            saved.append({"file": name, "seed": generated.seed, "infotext": generated.infotext})
        return saved

    def remove(self, names: list[str]) -> None:
        self.files.delete([self.check(name) for name in names])

    def read(self, name: str) -> bytes | None:
        """A stored file's bytes (None: no such file); ValueError for a name this module would not make."""
        return self.files.get(self.check(name))

    @staticmethod
    def check(name: str) -> str:
        if not FILE_NAME.match(name):
            raise ValueError(f"not a stored image name: {name!r}")
        return name

    # ------------------------------------------------------------------ signed links

    def sign(self, name: str, ttl: float) -> str:
        """Query string that lets anyone fetch ``name`` for ``ttl`` seconds (at most ``max_ttl``)."""
        expires = int(time.time() + min(ttl, self.max_ttl))
        return f"expires={expires}&signature={self._signature(name, expires)}"

    def verify(self, name: str, expires: str, signature: str) -> bool:
        return self.link_problem(name, expires, signature) is None

    def link_problem(self, name: str, expires: str, signature: str) -> str | None:
        """Why a signed link is refused (None: it is good): forged, expired, or valid further ahead than links live."""
        if not expires.isdigit() or len(expires) > 12 or not signature:
            return "the link has no valid expiry and signature"
        now = time.time()
        if int(expires) < now:
            return "the link has expired"
        if int(expires) > now + self.max_ttl + CLOCK_SLACK:
            return f"the link claims to live longer than this server's links do ({self.max_ttl / 3600:g} h)"
        if not hmac.compare_digest(self._signature(name, int(expires)), signature):
            return "the link's signature is wrong"
        return None

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self.secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()


def _without_paths(params: dict[str, Any]) -> dict[str, Any]:
    """Result parameters with LoRA, embedding, control model and IP-Adapter files by name: clients get images, not
    the server's layout."""
    params = dict(params)
    if params.get("loras"):
        params["loras"] = [(Path(path).stem, weight) for path, weight in params["loras"]]
    if params.get("embeddings"):
        params["embeddings"] = [Path(path).stem for path in params["embeddings"]]
    if params.get("controls"):
        params["controls"] = [{**unit, "model": _control_name(unit["model"])} for unit in params["controls"]]
    if params.get("image_prompts"):
        params["image_prompts"] = [{**ip, "model": Path(ip["model"]).stem} for ip in params["image_prompts"]]
    return params


def _control_name(model: str) -> str:
    """A control model's name as its library lists it: a file's stem, a folder's name."""
    path = Path(model)
    return path.stem if path.suffix.lower() in CONTROL_SUFFIXES else path.name


def open_data(config: ServerConfig) -> tuple[JobStore, Storage]:
    """The job store and its image files, as servers and workers share them: SQLite and a folder under
    ``config.data_dir``, or with ``config.store`` a PostgreSQL URL, both in that database.

    Checked first (``open_database``); ``config.reset_store`` moves a damaged SQLite store aside instead of refusing."""
    db = open_database(config.data_dir, reset=config.reset_store, url=config.store)
    store = JobStore(db, max_attempts=config.max_attempts)
    secret = store.set_meta("link_secret", secrets.token_hex(32), only_if_missing=True)
    db.restrict()
    files = TableFiles(db) if isinstance(db, PostgresDatabase) else FolderFiles(config.data_dir / IMAGES)
    return store, Storage(files, secret, max_ttl=config.link_ttl)


def open_database(data_dir: Path, *, reset: bool = False, url: str | None = None) -> Database | PostgresDatabase:
    """The store of ``data_dir`` (or at the PostgreSQL ``url``) once it is known to be usable; else ``StoreDamaged``
    (one line: the store, what is wrong, the ways out), or with ``reset`` the old SQLite files moved aside and a fresh
    store. A healthy store is never reset.
    """
    if url is not None:
        return _open_postgres(url, reset=reset)
    db = Database(data_dir / DB_FILE)
    problem = store_problem(db, FolderFiles(data_dir / IMAGES))
    if problem is None:
        return db
    if not reset:
        raise StoreDamaged(
            f"{db.path} {problem}; restore it (with its -wal file) from a backup, or start `ssdxl serve --reset-store` "
            f"to move it aside as {DB_FILE}.broken-<timestamp> and begin an empty store"
        )
    moved = move_aside(data_dir)
    log.warning("job store %s %s; moved aside: %s; starting an empty store", db.path, problem, ", ".join(moved))
    return Database(data_dir / DB_FILE)


def _open_postgres(url: str, *, reset: bool) -> PostgresDatabase:
    if not is_postgres(url):
        raise StoreDamaged(
            f"--store must be a postgresql://user:password@host/database URL, got {url.split(':')[0]}://…"
        )
    try:
        db = PostgresDatabase(url)
    except ImportError:
        raise StoreDamaged("--store postgresql://… needs psycopg: pip install 'ssdxl[serve]'") from None
    problem = db.problem()
    if problem is not None:
        if reset:
            problem += (
                "; --reset-store only moves a SQLite store aside: repair or drop this database with PostgreSQL's tools"
            )
        raise StoreDamaged(f"the job store at {db.name} {problem}")
    return db


def store_problem(db: Database, images: FolderFiles) -> str | None:
    """What is wrong with the SQLite store at ``db`` given the image files in ``images`` (None: nothing)."""
    if db.is_empty():
        files = images.names(FILE_NAME)
        if files:
            jobs = len({name[:32] for name in files})
            return f"is missing or empty, but {images} holds the files of {jobs} job(s)"
        return None
    problem = db.problem()
    if problem is not None:
        return problem
    ids = sorted({RESULT_NAME.match(name)[1] for name in images.names(RESULT_NAME)})
    known: set[str] = set()
    conn = db.connection()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        sql = f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})"
        known.update(row["id"] for row in conn.execute(sql, chunk))
    lost = len(ids) - len(known)
    if lost:
        return f"does not know {lost} job(s) whose results are in {images} (a lost or truncated -wal file?)"
    return None


def move_aside(data_dir: Path) -> list[str]:
    """Rename the store's files (and the images folder) to ``*.broken-<timestamp>``; returns the new names."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for suffix in ("", *SIDE_FILES):
        old = data_dir / f"{DB_FILE}{suffix}"
        if old.exists():
            new = data_dir / f"{DB_FILE}.broken-{stamp}{suffix}"  # -wal next to its file: SQLite can open both
            old.rename(new)
            moved.append(new.name)
    images = data_dir / IMAGES
    if images.is_dir() and any(images.iterdir()):
        new = data_dir / f"{IMAGES}.broken-{stamp}"
        images.rename(new)
        moved.append(new.name)
    return moved
