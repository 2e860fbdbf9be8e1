"""The denoising loop and the slice of the noise schedule a run covers.

One loop serves every request kind: txt2img starts from pure noise, img2img and the refiner
start part-way (``strength`` / ``start``), the base model of a base+refiner run stops part-way
(``end``), and inpainting re-imposes the known region after every step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin, UNet2DConditionModel

from ssdxl.conditioning.prompt import Conditioning

StepCallback = Callable[[int, int, torch.Tensor], None]  # (step done, total steps, latents)


def schedule_slice(
    scheduler: SchedulerMixin, steps: int, *, strength: float = 1.0, start: float = 0.0, end: float = 1.0
) -> torch.Tensor:
    """Set ``steps`` timesteps and return the part this run denoises.

    ``strength`` < 1 skips the noisiest steps (img2img). ``start``/``end`` cut the schedule at a
    fraction of the training timesteps, as diffusers' ``denoising_start``/``denoising_end`` do, so a
    base model and a refiner split one schedule between them.
    """
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    order = scheduler.order
    first = 0
    if strength < 1.0:
        kept = min(int(steps * strength), steps)
        first = (steps - kept) * order
    n_train = scheduler.config.num_train_timesteps
    if start > 0.0:
        cutoff = int(round(n_train - start * n_train))
        n = int((timesteps < cutoff).sum())
        if order == 2 and n % 2 == 0:
            n += 1  # a second-order step must not be split between its two evaluations
        first = max(first, len(timesteps) - n)
    last = len(timesteps)
    if end < 1.0:
        cutoff = int(round(n_train - end * n_train))
        last = int((timesteps >= cutoff).sum())
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(first)
    return timesteps[first:last]


@dataclass
class Inpainting:
    """The known image region, re-noised to each step's level and pasted outside the mask."""

    init_latents: torch.Tensor
    noise: torch.Tensor
    mask: torch.Tensor  # latent-sized, 1 = repaint


def denoise(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
    generator: torch.Generator | list[torch.Generator],
    *,
    guidance_cutoff: float = 1.0,
    inpainting: Inpainting | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the sampler over ``timesteps``; classifier-free guidance batches uncond and cond.

    ``latents`` may hold several images; a list of generators (one per image) gives each image
    its own per-step noise in ancestral/SDE samplers, so it matches the image made alone.
    Raising from ``callback`` stops the loop (a server cancels jobs this way).
    """
    guided = uncond is not None and guidance_scale > 1.0
    both = Conditioning.cat([uncond, cond]) if guided else cond
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    cfg_steps = int(round(len(timesteps) * guidance_cutoff))
    for i, t in enumerate(timesteps):
        use_cfg = guided and i < cfg_steps
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if use_cfg else latents, t)
        kwargs = (both if use_cfg else cond).unet_kwargs()
        noise_pred = unet(model_in, t, **kwargs, return_dict=False)[0]
        if use_cfg:
            uncond_pred, cond_pred = noise_pred.chunk(2)
            noise_pred = uncond_pred + guidance_scale * (cond_pred - uncond_pred)
        latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        if inpainting is not None:
            latents = _reimpose_known(scheduler, latents, inpainting, timesteps, i)
        if callback is not None:
            callback(i + 1, len(timesteps), latents)
    return latents


def _reimpose_known(
    scheduler: SchedulerMixin, latents: torch.Tensor, inp: Inpainting, timesteps: torch.Tensor, i: int
) -> torch.Tensor:
    known = inp.init_latents
    if i + 1 < len(timesteps):
        known = scheduler.add_noise(known, inp.noise, timesteps[i + 1 : i + 2])
    return inp.mask * latents + (1.0 - inp.mask) * known
