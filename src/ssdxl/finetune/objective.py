"""The fine-tuning loss: noise prediction on the model's own schedule, as diffusers' SDXL scripts train.

epsilon or v targets (whatever the scheduler config predicts), min-SNR-gamma weighting through
diffusers' ``compute_snr``, caption dropout to all-zero text conditioning (the SDXL pipeline's empty
negative prompt), and DreamBooth's prior-preservation term on a second batch of class images. With a
ControlNet, the frozen UNet takes the ControlNet's residuals for each batch's control maps (diffusers'
``train_controlnet_sdxl.py``), so the same loss trains the ControlNet.
Random draws come from the global CPU generator, which checkpoints save, so ``--resume`` is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import compute_snr

from ssdxl.finetune.data import ControlBatch
from ssdxl.models.components import Components
from ssdxl.models.vae import to_unet
from ssdxl.training.data import Batch, BucketBatches
from ssdxl.training.denoiser import TextConditioner, caption_keep_mask

Losses = dict[str, torch.Tensor]


def encode_latents(parts: Components, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A posterior sample of the frozen VAE, scaled to the UNet's latent space (noise drawn on the CPU)."""
    vae = parts.vae
    with torch.no_grad(), torch.autocast(device.type, enabled=False):  # the VAE runs in its own dtype
        posterior = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        eps = torch.randn(posterior.mean.shape).to(device, posterior.mean.dtype)
        return to_unet(vae, (posterior.mean + posterior.std * eps).float())


class DenoisingObjective:
    """``objective(batch) -> {"total": loss, ...}`` for the fine-tuning modes."""

    def __init__(
        self,
        parts: Components,
        text: TextConditioner,
        device: torch.device,
        *,
        trains_text: bool,
        snr_gamma: float,
        caption_dropout: float,
        prior: BucketBatches | None = None,
        prior_weight: float = 0.0,
        caption: Callable[[str], str] = str,
        controlnet: ControlNetModel | None = None,
    ) -> None:
        self.parts = parts
        self.unet: UNet2DConditionModel = parts.unet  # the loop swaps in accelerate's wrapper
        self.controlnet = controlnet  # likewise, when it is what trains
        self.text = text
        self.device = device
        self.trains_text = trains_text
        self.snr_gamma = snr_gamma
        self.caption_dropout = caption_dropout
        self.prior = prior
        self.prior_weight = prior_weight
        self.caption = caption
        self.noise = DDPMScheduler.from_config(parts.scheduler_config)
        self.noise.alphas_cumprod = self.noise.alphas_cumprod.to(device)

    def after_step(self) -> None:
        """Objectives may keep state of their own (the LCM target network); this one only has data."""

    def state_dict(self) -> dict[str, object]:
        return {"prior": self.prior.state_dict()} if self.prior is not None else {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if self.prior is not None:
            self.prior.load_state_dict(state["prior"])  # type: ignore[arg-type]

    def __call__(self, batch: Batch) -> Losses:
        losses = {"task": self.batch_loss(batch, self.caption_dropout)}
        total = losses["task"]
        if self.prior is not None and self.prior_weight > 0:
            losses["prior"] = self.batch_loss(next(self.prior), 0.0)
            total = total + self.prior_weight * losses["prior"]
        return {"total": total, **losses}

    def batch_loss(self, batch: Batch, caption_dropout: float) -> torch.Tensor:
        n = len(batch.captions)
        latents = encode_latents(self.parts, batch.pixels, self.device)
        noise = torch.randn(latents.shape).to(self.device)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (n,)).to(self.device)
        keep = caption_keep_mask(n, caption_dropout).to(self.device)
        noisy = self.noise.add_noise(latents, noise, t)
        kind = self.noise.config.prediction_type
        target = self.noise.get_velocity(latents, noise, t) if kind == "v_prediction" else noise
        captions = [self.caption(c) for c in batch.captions]
        with torch.set_grad_enabled(self.trains_text and torch.is_grad_enabled()):
            embeds, added = self.text.conditioning(captions, batch.time_ids.to(self.device), keep)
        residuals = self.control_residuals(batch, noisy, t, embeds, added)
        pred = self.unet(noisy, t, embeds, added_cond_kwargs=added, **residuals).sample
        per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        if self.snr_gamma > 0:
            snr = compute_snr(self.noise, t)
            weight = snr.clamp(max=self.snr_gamma) / (snr + 1 if kind == "v_prediction" else snr)
            per_sample = per_sample * weight
        return per_sample.mean()

    def control_residuals(
        self, batch: Batch, noisy: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor, added: dict[str, torch.Tensor]
    ) -> dict[str, object]:
        """The ControlNet's residuals for the batch's control maps (in [0, 1]), as UNet keyword arguments."""
        if self.controlnet is None:
            return {}
        if not isinstance(batch, ControlBatch):
            raise TypeError("a ControlNet objective needs batches with control maps")
        down, mid = self.controlnet(noisy, t, encoder_hidden_states=embeds, added_cond_kwargs=added,
                                    controlnet_cond=batch.control.to(self.device), return_dict=False)  # fmt: skip
        dtype = self.parts.unet.dtype  # the frozen UNet's own (a float32 residual would meet its bf16 norms)
        return {"down_block_additional_residuals": [d.to(dtype) for d in down],
                "mid_block_additional_residual": mid.to(dtype)}  # fmt: skip
