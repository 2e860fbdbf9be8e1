"""What a job keeps on disk: its input images and its result images, under the server's data folder.

A request is stored as JSON with its images replaced by file names; results are PNGs carrying the
same infotext and parameters ``ssdxl generate`` writes, except that adapter files appear by name,
not by the server's paths. Every file name is made here (job id, then ``init``/``mask``,
``control<k>`` for the k-th control unit's map, or attempt and index) and checked against one
pattern before it is served, so no name a client sends reaches the filesystem. Result links can be signed (HMAC, with an
expiry no further ahead than the server's link lifetime, 24 h by default) for clients that fetch
them without a key, such as an OpenAI client following a ``url``.

``open_data`` opens the data folder fail-closed: a damaged store, one from a newer ssdxl, a missing
store next to job files, or result files of jobs the store does not know (a lost WAL) stop the
server and its workers with a one-line ``StoreDamaged``; ``reset=True`` (``ssdxl serve
--reset-store``) moves such a store aside as ``ssdxl.db.broken-<timestamp>`` and starts an empty
one. Files are private to their owner: the store 0600 (it holds the link secret), images in a 0700
folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ssdxl.control.models import SUFFIXES as CONTROL_SUFFIXES
from ssdxl.output.files import save_image
from ssdxl.sampling.request import RECORDS, ControlUnit, GeneratedImage, GenerationRequest, Hires, ImagePrompt
from ssdxl.server.config import ServerConfig
from ssdxl.server.db import DB_FILE, SIDE_FILES, Database, StoreDamaged, private_dir
from ssdxl.server.store import JobStore

FILE_NAME = re.compile(r"^[0-9a-f]{32}-(init|mask|control\d+|ip\d+-\d+|a\d+-\d+)\.png$")
RESULT_NAME = re.compile(r"^([0-9a-f]{32})-a\d+-\d+\.png$")
IMAGES = "images"  # the data folder's image files
LINK_TTL = 24 * 3600.0  # default lifetime (and ceiling) of signed links
CLOCK_SLACK = 60.0  # seconds a link's expiry may exceed the ceiling (servers' clocks differ a little)
_TUPLES = ("original_size", "target_size", "crop_top_left", "outpaint")

log = logging.getLogger("ssdxl.server")


class Storage:
    def __init__(self, root: Path, secret: str, *, max_ttl: float = LINK_TTL):
        self.root = root
        self.secret = secret.encode()
        self.max_ttl = max_ttl
        private_dir(root)

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
        fields = {key: value for key, value in record.items() if key not in RECORDS}
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
        (image.convert(mode) if mode else image).save(self.root / name)
        return name

    def _load(self, name: str | None) -> Image.Image | None:
        if not name:
            return None
        with Image.open(self.path(name)) as image:
            return image.copy()

    # ------------------------------------------------------------------ results

    def save_results(self, job_id: str, attempt: int, images: list[GeneratedImage]) -> list[dict[str, Any]]:
        """Write one attempt's images; names carry the attempt so a lost claim never overwrites a winner's."""
        saved = []
        for i, generated in enumerate(images):
            name = f"{job_id}-a{attempt}-{i}.png"
            save_image(dataclasses.replace(generated, params=_without_paths(generated.params)), self.root / name)
            saved.append({"file": name, "seed": generated.seed, "infotext": generated.infotext})
        return saved

    def remove(self, names: list[str]) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        """The file for a name this module made; ValueError for any other name."""
        if not FILE_NAME.match(name):
            raise ValueError(f"not a stored image name: {name!r}")
        return self.root / name

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
    """The job store and the image files under ``config.data_dir``, as server and workers share them.

    Checked first (``open_database``); ``config.reset_store`` moves a damaged store aside instead of refusing."""
    db = open_database(config.data_dir, reset=config.reset_store)
    store = JobStore(db, max_attempts=config.max_attempts)
    secret = store.set_meta("link_secret", secrets.token_hex(32), only_if_missing=True)
    db.restrict()
    return store, Storage(config.data_dir / IMAGES, secret, max_ttl=config.link_ttl)


def open_database(data_dir: Path, *, reset: bool = False) -> Database:
    """The store of ``data_dir`` once it is known to be usable; else ``StoreDamaged`` (one line: the file, what is
    wrong, the ways out), or with ``reset`` the old files moved aside and a fresh store. A healthy store is never reset.
    """
    db = Database(data_dir / DB_FILE)
    problem = store_problem(db, data_dir / IMAGES)
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


def store_problem(db: Database, images: Path) -> str | None:
    """What is wrong with the store at ``db`` given the image files in ``images`` (None: nothing)."""
    if db.is_empty():
        files = _names(images, FILE_NAME)
        if files:
            jobs = len({name[:32] for name in files})
            return f"is missing or empty, but {images} holds the files of {jobs} job(s)"
        return None
    problem = db.problem()
    if problem is not None:
        return problem
    ids = sorted({RESULT_NAME.match(name)[1] for name in _names(images, RESULT_NAME)})
    known: set[str] = set()
    conn = db.connection()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        sql = f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})"
        known.update(row[0] for row in conn.execute(sql, chunk))
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


def _names(folder: Path, pattern: re.Pattern) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [entry.name for entry in entries if pattern.match(entry.name)]
    except FileNotFoundError:
        return []
