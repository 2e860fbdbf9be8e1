"""Fit a model's latent -> RGB preview map by least squares and store it in its ``ssdxl.json``.

    python scripts/fit_latent_preview.py src/ssdxl/builtin/shapes src/ssdxl/builtin/shapes-ssd1b

Fits on scenes of the shapes world (the built-in models' training data) encoded by the first folder's VAE, prints
the preview's mean colour error on held-out scenes with the fitted map and with the family's (SDXL) map, and
writes the fitted map into every folder given (the students share the teacher's VAE).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ssdxl.data.shapes import ShapesWorld
from ssdxl.models.latent_preview import fit_latent_rgb, latent_preview
from ssdxl.models.loading import load_components


def preview_error(vae, fmt, images) -> float:
    """Mean absolute difference (0-255 levels) between previews and the images area-averaged to the latent grid."""
    errors = []
    with torch.no_grad():
        for image in images:
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
            preview = np.asarray(latent_preview(latents, fmt), dtype=np.float32)
            small = torch.nn.functional.adaptive_avg_pool2d(pixels, latents.shape[-2:])[0].permute(1, 2, 0)
            errors.append(np.abs(preview - ((small.numpy() + 1) * 127.5)).mean())
    return float(np.mean(errors))


def main(folders: list[Path]) -> None:
    comps = load_components(str(folders[0]), dtype=torch.float32)
    train = [ShapesWorld(seed=0).sample(i).image for i in range(96)]
    held = [ShapesWorld(seed=1, split="heldout").sample(i).image for i in range(32)]
    family_fmt = comps.latent_format
    factors, bias = fit_latent_rgb(comps.vae, train)
    comps.pipeline.update(latent_rgb_factors=factors, latent_rgb_bias=bias)
    print(f"preview error on held-out scenes: family map {preview_error(comps.vae, family_fmt, held):.1f} levels, "
          f"fitted map {preview_error(comps.vae, comps.latent_format, held):.1f} levels")
    for folder in folders:
        info_file = folder / "ssdxl.json"
        info = json.loads(info_file.read_text())
        info["pipeline"].update(latent_rgb_factors=factors, latent_rgb_bias=bias)
        info_file.write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {info_file}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
