"""Upscaling a PIL image with a named upscaler: a PIL filter, or a model run at its native scale.

A model runs as many passes as the requested scale needs (a 4x model asked for 8x runs twice),
then the result is resized to the exact size with Lanczos, as A1111 does (so a 4x model asked for
2x runs once and is scaled down). Models run tiled, so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ssdxl.errors import UserError
from ssdxl.upscale.models import UpscaleModel
from ssdxl.upscale.registry import BUILTIN_FILTERS, BUILTIN_SCALE, Upscaler
from ssdxl.upscale.tiling import run_tiled

MAX_UPSCALE_SIDE = 8192  # longest side of a result, and of any model pass on the way to it
PLAIN_MODES = ("RGB", "RGBA", "L", "LA")


def upscale_image(
    image: Image.Image,
    upscaler: Upscaler | UpscaleModel,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    *,
    tile: int = 512,
    overlap: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Image.Image:
    """``image`` upscaled by ``scale`` or to ``size`` = (width, height); neither means the upscaler's own scale.

    ``tile`` is the largest input piece a model runs on at once (0: the whole image); pieces
    overlap by ``overlap`` pixels and are blended. Alpha is resized with Lanczos and put back;
    greyscale stays greyscale. ``device``/``dtype`` apply when ``upscaler`` still has to be loaded.
    """
    if tile < 0 or overlap < 0 or (tile and tile <= 2 * overlap):
        raise UserError(f"tile ({tile}) must be 0 (no tiling) or more than twice the overlap ({overlap})")
    image = _plain(image)
    if isinstance(upscaler, Upscaler) and upscaler.path is None:
        target = target_size(image.size, scale, size, BUILTIN_SCALE)
        return image.resize(target, BUILTIN_FILTERS[upscaler.name])
    model = upscaler.load(device=device, dtype=dtype) if isinstance(upscaler, Upscaler) else upscaler
    target = target_size(image.size, scale, size, model.scale)
    passes = model_passes(image.size, target, model.scale)
    colour = image.convert("RGB" if model.input_channels == 3 else "L")
    pixels = torch.from_numpy(np.asarray(colour, dtype=np.float32) / 255).reshape(1, *colour.size[::-1], -1)
    pixels = pixels.permute(0, 3, 1, 2)

    def forward(piece: torch.Tensor) -> torch.Tensor:
        return model.descriptor(piece.to(model.device, model.dtype))

    with torch.inference_mode():
        for _ in range(passes):
            if pixels.shape[1] != model.input_channels:  # a greyscale model's output fed to an RGB one, or back
                pixels = pixels.mean(1, keepdim=True) if model.input_channels == 1 else pixels.expand(-1, 3, -1, -1)
            whole = max(pixels.shape[-2:])
            pixels = run_tiled(
                forward,
                pixels,
                model.scale,
                model.output_channels,
                tile=tile if tile and model.tiles_well else whole,
                overlap=overlap,
            ).clamp_(0, 1)
    array = (pixels[0] * 255).round_().to(torch.uint8).permute(1, 2, 0).numpy()
    result = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    result = result.convert(image.mode.removesuffix("A")).resize(target, Image.Resampling.LANCZOS)
    if image.mode.endswith("A"):
        result.putalpha(image.getchannel("A").resize(target, Image.Resampling.LANCZOS))
    return result


def target_size(
    source: tuple[int, int], scale: float | None, size: tuple[int, int] | None, default_scale: float
) -> tuple[int, int]:
    """The result's (width, height), within ``MAX_UPSCALE_SIDE``."""
    if scale is not None and size is not None:
        raise UserError("give a scale or a size, not both")
    if size is not None:
        width, height = size
        if width < 1 or height < 1:
            raise UserError(f"upscale size must be positive; got {width}x{height}")
    else:
        factor = default_scale if scale is None else scale
        if not factor > 0:
            raise UserError(f"upscale factor must be positive; got {factor}")
        width, height = max(1, round(source[0] * factor)), max(1, round(source[1] * factor))
    if max(width, height) > MAX_UPSCALE_SIDE:
        raise UserError(f"the result would be {width}x{height}; the limit is {MAX_UPSCALE_SIDE} px per side")
    return width, height


def model_passes(source: tuple[int, int], target: tuple[int, int], native: int) -> int:
    """How often a ``native``-x model runs to reach ``target``; refused if a pass would exceed the size limit."""
    factor = max(target[0] / source[0], target[1] / source[1])
    passes = 0
    while native**passes < factor - 1e-9:
        passes += 1
    made = max(source) * native**passes
    if made > MAX_UPSCALE_SIDE:
        raise UserError(
            f"a {native}x model makes {source[0] * native**passes}x{source[1] * native**passes} on the way to "
            f"{target[0]}x{target[1]} ({passes} passes); the limit is {MAX_UPSCALE_SIDE} px per side: "
            "use a smaller image or a model of lower scale"
        )
    return passes


def _plain(image: Image.Image) -> Image.Image:
    """RGB, RGBA, L or LA: the modes resizing and the models handle (palettes and 1-bit are converted)."""
    if image.mode in PLAIN_MODES:
        return image
    alpha = "A" in image.getbands() or "transparency" in image.info
    grey = image.mode in ("1", "I", "I;16", "F")
    return image.convert(("L" if grey else "RGB") + ("A" if alpha else ""))
