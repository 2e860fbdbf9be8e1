"""The latent upscale modes of A1111's hires fix (``shared.latent_upscale_modes``), as data.

These resize the first pass's latents directly instead of decoding, upscaling pixels and encoding
again; A1111's ``/sdapi/v1/latent-upscale-modes`` lists their names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssdxl.errors import UserError

# name -> (torch interpolation mode, antialias), exactly A1111's table
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def is_latent_mode(name: str) -> bool:
    """Whether a hires-fix upscaler name means resizing latents rather than pixels."""
    return name in LATENT_MODES


def upscale_latents(latents: torch.Tensor, size: tuple[int, int], mode: str = "Latent") -> torch.Tensor:
    """``(B, C, h, w)`` latents resized to ``size`` = (height, width) in latent pixels, the order
    ``F.interpolate`` uses. Computed in float32 (some modes lack half-precision kernels on the CPU)."""
    if mode not in LATENT_MODES:
        raise UserError(f"unknown latent upscale mode {mode!r}; use one of: {', '.join(LATENT_MODES)}")
    height, width = size
    if height < 1 or width < 1:
        raise UserError(f"latent size must be positive; got {height}x{width}")
    interpolation, antialias = LATENT_MODES[mode]
    resized = F.interpolate(latents.float(), size=(height, width), mode=interpolation, antialias=antialias)
    return resized.to(latents.dtype)
