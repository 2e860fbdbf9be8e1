"""Counted FLOPs of one UNet call and of one VAE decode, without weights: the model is built on the meta
device, so even full-size SDXL at 1024x1024 costs seconds and no memory. (On the meta device attention
dispatches to another kernel than on the CPU; the counts agree within a few percent.)"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssdxl.models.families import time_ids_of, unet_inputs


def unet_flops(
    config: dict[str, Any], height: int, width: int, *, batch: int = 2, time_ids: int | None = None, vae_scale: int = 8
) -> int:
    """FLOPs of one UNet call on ``batch`` latents for a ``height`` x ``width`` image (batch 2 = guided).

    ``time_ids``: the family's micro-conditioning count (``Family.time_ids``); None reads a base model's from the
    config (6 with ``text_time`` conditioning, else 0).
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config).to(torch.bfloat16)
    count = time_ids_of(config) if time_ids is None else time_ids

    def empty(*shape: int) -> torch.Tensor:
        return torch.empty(shape, device="meta", dtype=torch.bfloat16)

    inputs = unet_inputs(config, count, batch, height // vae_scale, width // vae_scale, empty)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(timestep=torch.tensor(500.0), **inputs)
    return counter.get_total_flops()


def decoder_flops(config: dict[str, Any], height: int, width: int, *, vae_scale: int = 8) -> int:
    """FLOPs of one VAE decode of a ``height`` x ``width`` image (``config``: an ``AutoencoderKL``'s)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)  # on the meta device: shapes only, the count is the same in any dtype
    latents = torch.empty(1, vae.config.latent_channels, height // vae_scale, width // vae_scale, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.decode(latents)
    return counter.get_total_flops()
