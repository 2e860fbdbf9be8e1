"""Upscalers by name, as A1111's ``/sdapi/v1/upscalers`` lists them: the built-in PIL filters
("None", "Lanczos", "Nearest") and every model file in the user's upscaler folders, named by stem."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ssdxl.errors import UserError
from ssdxl.paths import files_by_stem
from ssdxl.upscale.latent import is_latent_mode
from ssdxl.upscale.models import (
    PICKLED_MODEL_SUFFIXES,
    SAFE_SUFFIXES,
    UpscaleModel,
    check_model_file,
    load_upscaler,
)

# A1111 treats "None" in a resize as a plain Lanczos resize, and reports 4 as these filters' scale
BUILTIN_FILTERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
BUILTIN_SCALE = 4
# "4x-UltraSharp", "4x_foolhardy_Remacri", "RealESRGAN_x4plus", "2xNomosUni": the usual way files state their scale
SCALE_IN_NAME = re.compile(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Upscaler:
    """A named upscaler: a built-in PIL filter (``path`` None) or a model file, checked against the pickle policy."""

    name: str
    path: Path | None = None
    allow_pickle: bool = False

    @property
    def scale(self) -> int | None:
        """The native scale, as far as known without loading: the file name's ``4x``/``x4``, else None."""
        if self.path is None:
            return BUILTIN_SCALE
        match = SCALE_IN_NAME.search(self.path.stem)
        return int(match.group(1) or match.group(2)) if match else None

    def record(self) -> dict[str, Any]:
        """The A1111 ``/sdapi/v1/upscalers`` entry."""
        return {
            "name": self.name,
            "model_name": None if self.path is None else self.path.stem,
            "model_path": None if self.path is None else str(self.path),
            "model_url": None,
            "scale": self.scale,
        }

    def load(self, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> UpscaleModel:
        """The loaded model of a file upscaler (cached by path)."""
        if self.path is None:
            raise UserError(f"upscaler {self.name!r} is a built-in filter, not a model")
        return load_upscaler(self.path, allow_pickle=self.allow_pickle, device=device, dtype=dtype)


def model_files(dirs: Iterable[str | os.PathLike], *, allow_pickle: bool = False) -> dict[str, Path]:
    """Upscaler files under the folders (recursively), by stem; the first folder wins a clash."""
    folders = [Path(d) for d in dirs]
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"upscaler folder {folder} not found")
    return files_by_stem(folders, SAFE_SUFFIXES + (PICKLED_MODEL_SUFFIXES if allow_pickle else ()))


def list_upscalers(dirs: Iterable[str | os.PathLike] = (), *, allow_pickle: bool = False) -> list[dict[str, Any]]:
    """A1111-shaped records of every upscaler: the built-ins, then the model files."""
    files = model_files(dirs, allow_pickle=allow_pickle)
    upscalers = [Upscaler(name) for name in BUILTIN_FILTERS]
    upscalers += [Upscaler(name, path, allow_pickle) for name, path in files.items()]
    return [upscaler.record() for upscaler in upscalers]


def resolve_upscaler(
    name_or_path: str | os.PathLike,
    dirs: Iterable[str | os.PathLike] = (),
    *,
    allow_pickle: bool = False,
    allow_paths: bool = True,
) -> Upscaler:
    """A built-in name, a model's name in ``dirs`` (case-insensitive), or (``allow_paths``) a model file's path."""
    text = str(name_or_path)
    if is_latent_mode(text):
        raise UserError(f"{text!r} is a latent upscale mode: it resizes latents in the hires fix, not images")
    builtin = {name.lower(): name for name in BUILTIN_FILTERS}.get(text.lower())
    if builtin is not None:
        return Upscaler(builtin)
    files = model_files(dirs, allow_pickle=True)  # pickled files are found, then refused by name below
    by_name = {name.lower(): name for name in files}
    if text.lower() in by_name:
        name = by_name[text.lower()]
        check_model_file(files[name], allow_pickle=allow_pickle)
        return Upscaler(name, files[name], allow_pickle)
    path = Path(text).expanduser()
    if allow_paths and path.is_file():
        check_model_file(path, allow_pickle=allow_pickle)
        return Upscaler(path.stem, path, allow_pickle)
    known = ", ".join([*BUILTIN_FILTERS, *files])
    raise UserError(f"upscaler {text!r} not found: not a file or one of {known}")
