"""Step previews: a model's latents as a picture while it samples, by its tiny VAE where it has one, else by one
linear map.

The linear map (and bias) takes a model's latent channels to RGB: the family's least-squares fit from latents to
decoded colours (``LatentFormat.rgb_factors``, as ComfyUI's previews use), or the model's own when it ships one
(``ssdxl.json``'s pipeline ``latent_rgb_factors`` / ``latent_rgb_bias``, fitted by ``fit_latent_rgb``: the built-in
models' VAE is not SDXL's). It costs a channels x 3 product per latent pixel: an image 1/8 (or 1/4) of the output size.

A tiny VAE (``ssdxl.models.tiny_vae``: TAESD / TAESDXL, or the one a built-in model ships) draws the preview at full
size with the shapes and edges the linear map blurs away. Its cost grows with the area, so latents larger than
``TINY_PREVIEW_SIDE`` a side are area-averaged down to it first: a preview is at most 512 px a side for a ÷8 VAE (one
TAESD decode of 64x64 latents), whatever the image's size.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssdxl.models.families import LatentFormat
from ssdxl.models.tiny_vae import TinyVAE
from ssdxl.models.vae import to_unet

TINY_PREVIEW_SIDE = 64  # latents a side a tiny-VAE preview decodes at most (larger ones are area-averaged to it)


def latent_preview(latents: torch.Tensor, fmt: LatentFormat) -> Image.Image:
    """One image's scaled latents [C, h, w] (or [1, C, h, w]) as an RGB image of h x w pixels."""
    x = latents.reshape(-1, *latents.shape[-2:]).float().cpu()
    factors, bias = torch.tensor(fmt.rgb_factors), torch.tensor(fmt.rgb_bias)
    rgb = torch.einsum("chw,cr->hwr", x, factors) + bias
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def tiny_preview(latents: torch.Tensor, tiny: TinyVAE) -> Image.Image:
    """One image's latents [C, h, w] (or [1, C, h, w]) decoded by a tiny VAE: the full-size image, or for latents
    over ``TINY_PREVIEW_SIDE`` a side, the image of their area average at that size."""
    x = latents.reshape(1, -1, *latents.shape[-2:])
    h, w = x.shape[-2:]
    if max(h, w) > TINY_PREVIEW_SIDE:
        scale = TINY_PREVIEW_SIDE / max(h, w)
        x = F.interpolate(x.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    pixels = tiny.decode(x)[0].nan_to_num(0.0).cpu()
    array = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


def preview_png(latents: torch.Tensor, fmt: LatentFormat, tiny: TinyVAE | None = None) -> bytes:
    """The preview of one image's latents as PNG bytes: by ``tiny`` where given, else by ``fmt``'s linear map."""
    buffer = io.BytesIO()
    image = tiny_preview(latents, tiny) if tiny is not None else latent_preview(latents, fmt)
    image.save(buffer, format="PNG")
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
