"""The denoising loop and the slice of the noise schedule a run covers.

One loop serves every request kind: txt2img starts from pure noise, img2img and the refiner
start part-way (``strength`` / ``start``), and the base model of a base+refiner run stops part-way
(``end``). What is called at each step (guidance, inpainting, the patched model) is the
denoiser's business (``denoiser.py``), not the loop's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import SchedulerMixin

from ssdxl.sampling.denoiser import GuidedDenoiser

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


def denoise(
    denoiser: GuidedDenoiser,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    generator: torch.Generator | list[torch.Generator],
    *,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Run the sampler over ``timesteps``: ask the denoiser for each step's prediction, step the scheduler.

    ``latents`` may hold several images; a list of generators (one per image) gives each image
    its own per-step noise in ancestral/SDE samplers, so it matches the image made alone.
    Raising from ``callback`` stops the loop (a server cancels jobs this way).
    """
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(timesteps):
        noise_pred = denoiser(latents, t, i)
        latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
        latents = denoiser.after_step(latents, i)
        if callback is not None:
            callback(i + 1, len(timesteps), latents)
    return latents
