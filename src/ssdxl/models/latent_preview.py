"""Step previews without the VAE: a model's latent channels mapped to RGB by one linear map (and bias).

The map is the family's least-squares fit from latents to decoded colours (``LatentFormat.rgb_factors``, as
ComfyUI's previews use), or the model's own when it ships one (``ssdxl.json``'s pipeline
``latent_rgb_factors`` / ``latent_rgb_bias``, fitted by ``fit_latent_rgb``: the built-in models' VAE is not
SDXL's). A preview costs a channels x 3 product per latent pixel: an image 1/8 (or 1/4) of the output size.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ssdxl.models.families import LatentFormat
from ssdxl.models.vae import to_unet


def latent_preview(latents: torch.Tensor, fmt: LatentFormat) -> Image.Image:
    """One image's scaled latents [C, h, w] (or [1, C, h, w]) as an RGB image of h x w pixels."""
    x = latents.reshape(-1, *latents.shape[-2:]).float().cpu()
    factors, bias = torch.tensor(fmt.rgb_factors), torch.tensor(fmt.rgb_bias)
    rgb = torch.einsum("chw,cr->hwr", x, factors) + bias
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def preview_png(latents: torch.Tensor, fmt: LatentFormat) -> bytes:
    buffer = io.BytesIO()
    latent_preview(latents, fmt).save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def fit_latent_rgb(vae, images: list[Image.Image]) -> tuple[list[list[float]], list[float]]:
    """(factors [C][3], bias [3]) mapping ``vae``'s scaled latents of ``images`` to their colours (in [-1, 1],
    area-averaged to the latent grid) by least squares."""
    rows, targets = [], []
    for image in images:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1)
        pixels = pixels.permute(2, 0, 1)[None].to(vae.device, vae.dtype)
        latents = vae.encode(pixels).latent_dist.mode().float()
        latents = to_unet(vae, latents)
        colours = torch.nn.functional.adaptive_avg_pool2d(pixels.float(), latents.shape[-2:])
        rows.append(latents[0].flatten(1).T.cpu())
        targets.append(colours[0].flatten(1).T.cpu())
    x = torch.cat(rows)
    design = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    solution = torch.linalg.lstsq(design.double(), torch.cat(targets).double()).solution.float()
    factors, bias = solution[:-1], solution[-1]
    return [[round(v, 4) for v in row] for row in factors.tolist()], [round(v, 4) for v in bias.tolist()]
