"""Prompts to SDXL conditioning: what the UNet's cross-attention and ``text_time`` embedding read.

Each CLIP tower's penultimate hidden states are concatenated along the feature axis (768 + 1280
= 2048 for SDXL); the second tower's pooled projection becomes ``text_embeds``. A refiner has
only the second tower. The six (base) or five (refiner) micro-conditioning numbers become
``time_ids``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdxl.models.components import Components


@dataclass
class Conditioning:
    """Everything the UNet needs besides the latents and timestep, for a batch of prompts."""

    embeds: torch.Tensor  # [B, 77, cross_attention_dim]
    pooled: torch.Tensor  # [B, pooled_dim]
    time_ids: torch.Tensor  # [B, 5 or 6]

    def unet_kwargs(self) -> dict:
        return {
            "encoder_hidden_states": self.embeds,
            "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids},
        }

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            torch.cat([p.pooled for p in parts]),
            torch.cat([p.time_ids for p in parts]),
        )

    def repeat(self, n: int) -> Conditioning:
        return Conditioning(self.embeds.repeat(n, 1, 1), self.pooled.repeat(n, 1), self.time_ids.repeat(n, 1))


def encode_text(components: Components, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds, pooled) for ``prompts``; text longer than 75 tokens is cut, as in diffusers."""
    towers = [
        (components.tokenizer, components.text_encoder),
        (components.tokenizer_2, components.text_encoder_2),
    ]
    hidden = []
    pooled = None
    for tokenizer, encoder in towers:
        if encoder is None:
            continue
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
    return torch.cat(hidden, dim=-1), pooled


def micro_conditioning(
    components: Components,
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    target_size: tuple[int, int],
    aesthetic_score: float,
) -> torch.Tensor:
    """SDXL's size (and, for a refiner, aesthetic) conditioning as one row of ``time_ids``.

    Sizes are (height, width), as in the SDXL paper and diffusers.
    """
    if components.pipeline.get("requires_aesthetics_score") or components.text_encoder is None:
        values = [*original_size, *crop_top_left, aesthetic_score]
    else:
        values = [*original_size, *crop_top_left, *target_size]
    return torch.tensor([values], dtype=torch.float32)


def empty_like(embeds: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL base's unconditional input for an empty negative prompt: zeros, as it was trained."""
    return torch.zeros_like(embeds), torch.zeros_like(pooled)
