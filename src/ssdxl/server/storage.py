"""What a job keeps on disk: its input images and its result images, under the server's data folder.

A request is stored as JSON with its images replaced by file names; results are PNGs carrying the
same infotext and parameters ``ssdxl generate`` writes, except that adapter files appear by name,
not by the server's paths. Every file name is made here (job id,
then ``init``/``mask`` or attempt and index) and checked against one pattern before it is served,
so no name a client sends reaches the filesystem. Result links can be signed (HMAC, with an
expiry) for clients that fetch them without a key, such as an OpenAI client following a ``url``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ssdxl.output.files import save_image
from ssdxl.sampling.request import GeneratedImage, GenerationRequest
from ssdxl.server.config import ServerConfig
from ssdxl.server.db import DB_FILE, Database
from ssdxl.server.store import JobStore

FILE_NAME = re.compile(r"^[0-9a-f]{32}-(init|mask|a\d+-\d+)\.png$")
_TUPLES = ("original_size", "target_size", "crop_top_left")


class Storage:
    def __init__(self, root: Path, secret: str):
        self.root = root
        self.secret = secret.encode()
        root.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ requests

    def save_request(self, job_id: str, request: GenerationRequest) -> dict[str, Any]:
        """The request as JSON-ready data; its images are written as PNG files."""
        record = request.to_params()
        for key, image, mode in (("init_image", request.init_image, "RGB"), ("mask_image", request.mask_image, "L")):
            record[key] = None
            if image is not None:
                name = f"{job_id}-{key.removesuffix('_image')}.png"
                image.convert(mode).save(self.root / name)
                record[key] = name
        return record

    def load_request(self, record: dict[str, Any]) -> GenerationRequest:
        fields = dict(record)
        for key in _TUPLES:
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        for key in ("init_image", "mask_image"):
            if fields.get(key):
                with Image.open(self.path(fields[key])) as image:
                    fields[key] = image.copy()
        return GenerationRequest(**fields)

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
        """Query string that lets anyone fetch ``name`` for ``ttl`` seconds."""
        expires = int(time.time() + ttl)
        return f"expires={expires}&signature={self._signature(name, expires)}"

    def verify(self, name: str, expires: str, signature: str) -> bool:
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(self._signature(name, int(expires)), signature)

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self.secret, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()


def _without_paths(params: dict[str, Any]) -> dict[str, Any]:
    """Result parameters with LoRA and embedding files by name: clients get images, not the server's layout."""
    params = dict(params)
    if params.get("loras"):
        params["loras"] = [(Path(path).stem, weight) for path, weight in params["loras"]]
    if params.get("embeddings"):
        params["embeddings"] = [Path(path).stem for path in params["embeddings"]]
    return params


def open_data(config: ServerConfig) -> tuple[JobStore, Storage]:
    """The job store and the image files under ``config.data_dir``, as server and workers share them."""
    store = JobStore(Database(config.data_dir / DB_FILE), max_attempts=config.max_attempts)
    secret = store.set_meta("link_secret", secrets.token_hex(32), only_if_missing=True)
    return store, Storage(config.data_dir / "images", secret)
