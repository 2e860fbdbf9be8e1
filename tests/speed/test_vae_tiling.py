"""Tiled VAE decoding is opt-in: a no-op within one tile, finite and full-size beyond it."""

import torch
from diffusers import AutoencoderKL

from ssdxl.models.presets import get_preset


def test_tiling_is_exact_within_one_tile_and_finite_beyond():
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(get_preset("vega", "tiny").vae).eval()
    small, large = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 16, 16)  # the tiny VAE's tile is 8 latents
    with torch.no_grad():
        whole_small = vae.decode(small).sample
        vae.enable_tiling()
        assert torch.equal(vae.decode(small).sample, whole_small)
        tiled = vae.decode(large).sample
    assert tiled.shape == (1, 3, 128, 128) and torch.isfinite(tiled).all()
