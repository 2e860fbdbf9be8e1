"""What a sampler calls: one request's model call, with guidance and inpainting wrapped around it.

The denoising loop (``loop.denoise``) knows only ``denoiser(latents, t, i)`` and
``denoiser.after_step(latents, i)``, as k-diffusion's samplers know only ``model(x, sigma, **extra)``.
Everything a request adds lives here instead:

- ``ModelCall`` is the UNet as the runtime runs it (eager, DeepCache or OpenVINO, with whatever
  adapters the request patched in: ``ssdxl.adapters.patching``) plus the inputs it is called with.
  Extra model inputs join the call here: the control units' residuals (``ssdxl.control.residuals``),
  which depend on the step; IP-Adapter image embeddings travel in the ``Conditioning``.
- ``GuidedDenoiser`` wraps it with classifier-free guidance (uncond and cond in one batch), the
  guidance cut-off and rescale, and inpainting's re-imposed known region after each scheduler step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import SchedulerMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from ssdxl.conditioning.prompt import Conditioning
from ssdxl.control.residuals import ControlStack


@dataclass
class ModelCall:
    """The UNet call of one request: ``call(x, t, cond, step, steps)`` is the noise prediction for ``x`` at
    step ``step`` of ``steps`` (control units act on part of the schedule)."""

    unet: Callable[..., Any]  # the module, or the runtime's stand-in for it
    controls: ControlStack | None = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int = 0, steps: int = 1):
        extra = self.controls.unet_kwargs(x, t, cond, step, steps) if self.controls else {}
        return self.unet(x, t, **cond.unet_kwargs(), **extra, return_dict=False)[0]


@dataclass
class Inpainting:
    """The known image region, re-noised to each step's level and pasted outside the mask."""

    init_latents: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor  # latent-sized, 1 = repaint


class GuidedDenoiser:
    """Classifier-free guidance over a ``ModelCall`` for the first ``cfg_steps`` steps, then the
    conditional prediction alone; with ``inpainting``, the known region is restored after each step."""

    def __init__(
        self,
        model: ModelCall,
        scheduler: SchedulerMixin,
        timesteps: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float,
        *,
        guidance_cutoff: float = 1.0,
        guidance_rescale: float = 0.0,
        inpainting: Inpainting | None = None,
    ):
        self.model = model
        self.scheduler = scheduler
        self.timesteps = timesteps
        self.cond = cond
        self.guidance_scale = guidance_scale
        self.guided = uncond is not None and guidance_scale > 1.0
        self.both = Conditioning.cat([uncond, cond]) if self.guided else cond
        self.cfg_steps = int(round(len(timesteps) * guidance_cutoff))
        self.guidance_rescale = guidance_rescale
        self.inpainting = inpainting

    def __call__(self, latents: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        """The guided noise prediction for step ``i`` at timestep ``t``."""
        steps = len(self.timesteps)
        if not (self.guided and i < self.cfg_steps):
            return self.model(self.scheduler.scale_model_input(latents, t), t, self.cond, i, steps)
        model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        uncond_pred, cond_pred = self.model(model_in, t, self.both, i, steps).chunk(2)
        guided = uncond_pred + self.guidance_scale * (cond_pred - uncond_pred)
        if self.guidance_rescale > 0:  # "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4
            guided = rescale_noise_cfg(guided, cond_pred, guidance_rescale=self.guidance_rescale)
        return guided

    def after_step(self, latents: torch.Tensor, i: int) -> torch.Tensor:
        """The latents after step ``i``, with inpainting's known region re-imposed at the next level."""
        inp = self.inpainting
        if inp is None:
            return latents
        known = inp.init_latents
        if i + 1 < len(self.timesteps):
            known = self.scheduler.add_noise(known, inp.noise, self.timesteps[i + 1 : i + 2])
        return inp.mask * latents + (1.0 - inp.mask) * known
