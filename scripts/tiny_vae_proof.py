"""Measure a built-in model's shipped tiny VAE: PSNR against the full VAE's decode, and decode times.

    python scripts/tiny_vae_proof.py [--model shapes] [--scenes 32] [--repeats 50]

PSNR (dB, pixels in [-1, 1]) on held-out scenes of the shapes world, each encoded by the model's VAE (its mode), of
the linear preview map (upsampled bilinearly to full size) and of the tiny decoder, both against the full VAE's decode
of the same latents. Times: one image's decode (median of ``repeats``) by the full VAE and by the tiny one, in float32
and bfloat16, channels-last as the engine runs them on a CPU, on this machine's torch threads, with the load average
before and after. Then SDXL's scale (random weights: speed does not depend on them) at 64x64 latents (512x512), the
largest a preview decodes (``latent_preview.TINY_PREVIEW_SIDE``): SDXL's VAE against a TAESD-sized tiny VAE.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

from ssdxl.data.shapes import ShapesWorld
from ssdxl.models import builtin
from ssdxl.models.loading import file_hash, load_components
from ssdxl.models.presets import get_preset
from ssdxl.models.tiny_vae import load_tiny_vae
from ssdxl.models.vae import latent_space, to_unet, to_vae
from ssdxl.speed import tuning


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).pow(2).mean().clamp_min(1e-10)
    return float(10 * torch.log10(4.0 / mse))


def timed(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--scenes", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    parts = load_components(args.model, dtype=torch.float32)
    vae = parts.vae.eval()
    folder = builtin.tiny_vae(latent_space(vae))
    tiny = load_tiny_vae(folder, vae, dtype=torch.float32)
    params = sum(p.numel() for p in tiny.model.parameters())
    weights = folder / "diffusion_pytorch_model.safetensors"
    print(f"tiny VAE {folder.name} ({file_hash(weights)}): {params:,} parameters, {weights.stat().st_size:,} bytes; "
          f"full VAE {sum(p.numel() for p in vae.parameters()):,} parameters")  # fmt: skip

    fmt = parts.latent_format
    factors, bias = torch.tensor(fmt.rgb_factors), torch.tensor(fmt.rgb_bias)
    world = ShapesWorld(seed=1, split="heldout")
    linear, small = [], []
    for index in range(args.scenes):
        image = world.sample(index).image
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        latents = to_unet(vae, vae.encode(pixels).latent_dist.mode())
        reference = vae.decode(to_vae(vae, latents)).sample
        preview = torch.einsum("bchw,cr->brhw", latents, factors) + bias[:, None, None]
        preview = F.interpolate(preview, size=reference.shape[-2:], mode="bilinear", align_corners=False)
        linear.append(psnr(preview, reference))
        small.append(psnr(tiny.decode(latents), reference))
    print(f"PSNR against the full VAE's decode, {args.scenes} held-out scenes: linear preview map "
          f"{np.mean(linear):.2f} dB (min {np.min(linear):.2f}), tiny decoder {np.mean(small):.2f} dB "
          f"(min {np.min(small):.2f})")  # fmt: skip

    print(f"load average before timing: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    latents = torch.randn(1, vae.config.latent_channels, 16, 16)
    cpu = torch.device("cpu")
    tuning.apply_vae(vae, cpu)
    tuning.apply_vae(tiny.model, cpu)
    for dtype in (torch.float32, torch.bfloat16):
        full = timed(lambda: vae.to(dtype).decode(to_vae(vae, latents).to(dtype)).sample, args.repeats)  # noqa: B023
        fast = timed(lambda: tiny.decode(latents, dtype), args.repeats)  # noqa: B023
        print(f"decode of one 64x64 image, {str(dtype).removeprefix('torch.')}: full VAE {full * 1000:.2f} ms, "
              f"tiny VAE {fast * 1000:.2f} ms ({full / fast:.1f}x)")  # fmt: skip
    sdxl, taesd = AutoencoderKL.from_config(get_preset("sdxl-base").vae).eval(), AutoencoderTiny().eval()
    tuning.apply_vae(sdxl, cpu)
    tuning.apply_vae(taesd, cpu)
    big = torch.randn(1, 4, 64, 64)
    repeats = max(3, args.repeats // 10)
    for dtype in (torch.float32, torch.bfloat16):
        full = timed(lambda: sdxl.to(dtype).decode(big.to(dtype)).sample, repeats)  # noqa: B023
        fast = timed(lambda: taesd.to(dtype).decode(big.to(dtype)).sample, repeats)  # noqa: B023
        print(f"SDXL scale, 64x64 latents -> 512x512, {str(dtype).removeprefix('torch.')}: SDXL VAE {full:.2f} s, "
              f"TAESD-sized {fast:.2f} s ({full / fast:.1f}x)")  # fmt: skip
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
