"""Counted UNet FLOPs for one call, without weights: the model is built on the meta device, so even
full-size SDXL at 1024x1024 costs seconds and no memory. (On the meta device attention dispatches
to another kernel than on the CPU; the counts agree within a few percent.)"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def unet_flops(
    config: dict[str, Any], height: int, width: int, *, batch: int = 2, time_ids: int = 6, vae_scale: int = 8
) -> int:
    """FLOPs of one UNet call on ``batch`` latents for a ``height`` x ``width`` image (batch 2 = guided).

    ``time_ids`` is 6 for base models and 5 for a refiner (aesthetic score instead of target size).
    """
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config).to(torch.bfloat16)
    meta = {"device": "meta", "dtype": torch.bfloat16}
    pooled = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
    sample = torch.empty(batch, config["in_channels"], height // vae_scale, width // vae_scale, **meta)
    added = {"text_embeds": torch.empty(batch, pooled, **meta), "time_ids": torch.empty(batch, time_ids, **meta)}
    context = torch.empty(batch, 77, config["cross_attention_dim"], **meta)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, torch.tensor(500.0), encoder_hidden_states=context, added_cond_kwargs=added)
    return counter.get_total_flops()
