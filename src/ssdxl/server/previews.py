"""Step previews without the VAE: SDXL's 4 latent channels mapped to RGB by one fixed linear map.

The factors (and bias) are the widely used least-squares fit from SDXL latents to the decoded
colours (as in ComfyUI's previews); a preview costs a 4x3 matrix product per pixel of the
latent, i.e. an image 1/8 of the output size, which the page scales up.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

SDXL_LATENT_RGB = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
SDXL_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


def latent_preview(latents: torch.Tensor) -> Image.Image:
    """One image's scaled latents [4, h, w] (or [1, 4, h, w]) as an RGB image of h x w pixels."""
    x = latents.reshape(-1, *latents.shape[-2:]).float().cpu()
    rgb = torch.einsum("chw,cr->hwr", x, SDXL_LATENT_RGB) + SDXL_LATENT_RGB_BIAS
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def preview_png(latents: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    latent_preview(latents).save(buffer, format="PNG")
    return buffer.getvalue()
