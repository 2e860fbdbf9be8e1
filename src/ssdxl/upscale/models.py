"""Upscaler model files (ESRGAN, Real-ESRGAN, SwinIR, HAT, ...) loaded through ``spandrel``.

spandrel is installed with ``pip install --no-deps spandrel==0.4.2``: its torchvision dependency has
no wheel that imports beside the CPU torch build ssdxl uses. ``import_spandrel`` explains how it is
imported anyway.
"""

from __future__ import annotations

import enum
import functools
import os
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssdxl.errors import UserError, first_line
from ssdxl.models.loading import PICKLE_HINT

SPANDREL_HINT = "pixel upscalers need spandrel: pip install --no-deps spandrel==0.4.2 (see README)"
SAFE_SUFFIXES = (".safetensors",)
PICKLED_MODEL_SUFFIXES = (".ckpt", ".pt", ".pth")  # the pickled formats spandrel reads
CACHE_SIZE = 2  # loaded models kept: a hires-fix upscaler and the CLI/extras one

_import_lock = threading.Lock()


@dataclass(frozen=True)
class UpscaleModel:
    """A loaded single-image upscaler, ready on its device."""

    descriptor: Any  # spandrel.ImageModelDescriptor
    path: Path
    scale: int
    architecture: str
    input_channels: int
    output_channels: int

    @property
    def device(self) -> torch.device:
        return self.descriptor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.descriptor.dtype

    @property
    def tiles_well(self) -> bool:
        """False for models that tile internally (spandrel's ``ModelTiling.INTERNAL``): give them the whole image."""
        return self.descriptor.tiling.name != "INTERNAL"


def import_spandrel() -> types.ModuleType:
    """``import spandrel`` without torchvision.

    spandrel's registry imports every architecture eagerly, and two of them that are not upscalers
    (LaMa inpainting, RestoreFormer face restoration) import names from
    ``torchvision.transforms.functional`` at module level. When torchvision is absent, stand-in
    modules offering those names (functions that raise if ever called) are put into ``sys.modules``
    for the duration of the import only, so no other code sees a fake torchvision.
    """
    with _import_lock:
        if sys.modules.get("spandrel") is not None:
            return sys.modules["spandrel"]
        try:
            import torchvision  # noqa: F401
        except ImportError:
            stand_ins = _torchvision_stand_ins()
        else:
            stand_ins = {}
        added = [name for name in stand_ins if name not in sys.modules]
        sys.modules.update({name: stand_ins[name] for name in added})
        try:
            import spandrel
        except ImportError as exc:
            if exc.name is not None and exc.name.split(".")[0] == "spandrel":
                raise UserError(SPANDREL_HINT) from None
            raise UserError(f"spandrel failed to import ({first_line(exc)}); {SPANDREL_HINT}") from None
        finally:
            for name in added:
                sys.modules.pop(name, None)
        return spandrel


def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    """Modules named like torchvision's that offer what spandrel's non-upscaler architectures import."""

    def unavailable(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("this spandrel architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = enum.Enum(  # type: ignore[attr-defined]
        "InterpolationMode", {"NEAREST": "nearest", "BILINEAR": "bilinear", "BICUBIC": "bicubic"}
    )
    functional.rotate = unavailable  # type: ignore[attr-defined]
    functional.normalize = unavailable  # type: ignore[attr-defined]
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional  # type: ignore[attr-defined]
    package = types.ModuleType("torchvision")
    package.transforms = transforms  # type: ignore[attr-defined]
    for module in (package, transforms):
        module.__path__ = []  # type: ignore[attr-defined]  # a package, so submodule imports resolve
    return {module.__name__: module for module in (package, transforms, functional)}


def check_model_file(path: Path, *, allow_pickle: bool) -> None:
    """The file is one an upscaler can be loaded from under the pickle policy, else a UserError."""
    suffix = path.suffix.lower()
    if suffix in PICKLED_MODEL_SUFFIXES:
        if not allow_pickle:
            raise UserError(f"refusing to load upscaler {path.name}: {PICKLE_HINT}")
    elif suffix not in SAFE_SUFFIXES:
        known = ", ".join(SAFE_SUFFIXES + PICKLED_MODEL_SUFFIXES)
        raise UserError(f"unsupported upscaler file {path.name}: expected one of {known}")
    if not path.is_file():
        raise UserError(f"upscaler file {path} not found")


def load_upscaler(
    path: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> UpscaleModel:
    """Load (or take from the small cache) a single-image upscaler file.

    ``dtype=None`` picks float16 on CUDA where the model supports it, else float32; a half
    precision the architecture cannot run in falls back to float32 too.
    """
    path = Path(path).expanduser()
    check_model_file(path, allow_pickle=allow_pickle)
    device = torch.device(device)
    stat = path.stat()
    return _load_cached(path.resolve(), stat.st_mtime_ns, stat.st_size, device, dtype)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _load_cached(
    path: Path, _mtime_ns: int, _size: int, device: torch.device, dtype: torch.dtype | None
) -> UpscaleModel:
    """Keyed by modification time and size too, so a replaced file is read again."""
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader().load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise UserError(f"{path.name} is not an upscaler architecture spandrel knows") from None
    except Exception as exc:
        raise UserError(f"{path} is not a readable upscaler file (truncated or corrupt?): {first_line(exc)}") from None
    architecture = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UserError(f"{path.name} is a {architecture} {descriptor.purpose.lower()} model, not an upscaler")
    if descriptor.scale < 2:
        raise UserError(
            f"{path.name} is a {architecture} model of scale {descriptor.scale} ({descriptor.purpose}), not an upscaler"
        )
    if descriptor.input_channels not in (1, 3) or descriptor.output_channels not in (1, 3):
        raise UserError(
            f"{path.name}: {architecture} model with {descriptor.input_channels} input and "
            f"{descriptor.output_channels} output channels; only RGB or greyscale upscalers are supported"
        )
    descriptor.to(device=device, dtype=_pick_dtype(descriptor, device, dtype)).eval()
    return UpscaleModel(
        descriptor=descriptor,
        path=path,
        scale=descriptor.scale,
        architecture=architecture,
        input_channels=descriptor.input_channels,
        output_channels=descriptor.output_channels,
    )


def _pick_dtype(descriptor: Any, device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if (dtype == torch.float16 and not descriptor.supports_half) or (
        dtype == torch.bfloat16 and not descriptor.supports_bfloat16
    ):
        return torch.float32
    return dtype
