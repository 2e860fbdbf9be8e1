"""From a training batch to what teacher and student UNets both read: noisy latents, timestep, text.

Distillation trains only the UNet: the VAE, both text towers and the noise schedule are the
teacher's, frozen, and exported unchanged with the student. Conditioning is built exactly as
``ssdxl train`` builds it (``training.denoiser``), caption dropout included, so the student also
learns the unconditional prediction that classifier-free guidance needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL

from ssdxl.errors import UserError
from ssdxl.models.components import Components
from ssdxl.models.vae import to_unet
from ssdxl.training.data import Batch
from ssdxl.training.denoiser import DeviceTextConditioner, NoiseSchedule, TextConditioner, caption_keep_mask


@dataclass
class Frozen:
    """The teacher's parts the student borrows unchanged."""

    vae: AutoencoderKL
    text: TextConditioner
    noise: NoiseSchedule
    device: torch.device

    @classmethod
    def of(cls, parts: Components, device: torch.device) -> Frozen:
        if parts.text_encoder is None:
            raise UserError("distillation needs a base model with both text encoders (not a refiner)")
        for module in (parts.vae, parts.text_encoder, parts.text_encoder_2):
            module.to(device).eval().requires_grad_(False)
        noise = NoiseSchedule(NoiseSchedule.from_config(parts.scheduler_config).alphas_cumprod.to(device))
        return cls(parts.vae, DeviceTextConditioner(parts, device), noise, device)


@dataclass
class UNetInputs:
    noisy: torch.Tensor
    timesteps: torch.Tensor
    eps: torch.Tensor  # the noise added: the task loss's target
    embeds: torch.Tensor
    added: dict[str, torch.Tensor]

    def kwargs(self) -> dict[str, Any]:
        return {"sample": self.noisy, "timestep": self.timesteps, "encoder_hidden_states": self.embeds,
                "added_cond_kwargs": self.added}  # fmt: skip


@torch.no_grad()
def unet_inputs(frozen: Frozen, batch: Batch, caption_dropout: float) -> UNetInputs:
    """Encode, noise and condition one batch; random draws come from the global CPU generator.

    The latents are the posterior mean (the SDXL VAE's posterior is nearly deterministic), so no
    device generator needs checkpointing for an exact ``--resume``.
    """
    device = frozen.device
    n = len(batch.captions)
    vae = frozen.vae
    latents = to_unet(vae, vae.encode(batch.pixels.to(device, vae.dtype)).latent_dist.mode().float())
    eps = torch.randn(latents.shape).to(device)
    t = torch.randint(0, frozen.noise.steps, (n,)).to(device)
    keep = caption_keep_mask(n, caption_dropout).to(device)
    embeds, added = frozen.text.conditioning(batch.captions, batch.time_ids.to(device), keep)
    return UNetInputs(frozen.noise.add(latents, eps, t), t, eps, embeds, added)


def fixed_inputs(frozen: Frozen, batches: list[Batch], seed: int) -> list[UNetInputs]:
    """The same inputs every time (noise, timesteps; no caption dropout), for measurements."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [unet_inputs(frozen, batch, caption_dropout=0.0) for batch in batches]
