"""How many CPU threads a model's UNet runs with, when nobody said.

Small UNets gain nothing from a second OpenMP thread and lose a lot when another process holds a core: every
barrier waits for the thread that lost it. Measured by ``bench/contention.py`` (docs/performance.md, two runs): the
built-in model's guided call takes about 20 ms quiet on 2 threads or 1, but beside another busy 2-thread PyTorch
process 40-96 ms on 2 threads against 24-25 ms on 1; the tiny Vega is faster on 1 thread even quiet. A full-size
UNet is twice as fast on 2 threads quiet and gets about 2.3x slower beside the same competitor, so it keeps every
core.

So the choice is by the work of one call: parameters times latent pixels, a proxy for FLOPs that needs no tracing.
``Runtime.use_threads`` sets it when a request starts (for its size) and whenever a UNet is asked for (for the
latents it will take), out of the cores torch had when this module was imported; never when the user set a count
(``OMP_NUM_THREADS``, ``ssdxl serve --threads``). The count depends on nothing but the model and the request, never
on the load or on what ran before, because a different count changes results in the last bits (oneDNN splits
reductions by thread), and a seed must make the same image on the same machine.
"""

from __future__ import annotations

import os
import weakref

import torch

SMALL_WORK = 2e10  # parameters x latent pixels of one UNet call below which one thread is as fast and far steadier
PINNED_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_pinned = False  # set by ``pin``: the process's thread count is the user's
DEFAULT = torch.get_num_threads()  # the cores torch would use: what large work gets, whatever ran before
_params: weakref.WeakKeyDictionary[torch.nn.Module, int] = weakref.WeakKeyDictionary()


def pin(threads: int) -> None:
    """Use ``threads`` and never change it (``ssdxl serve --threads``, a benchmark's setting)."""
    global _pinned
    torch.set_num_threads(threads)
    _pinned = True


def pinned() -> bool:
    return _pinned or any(os.environ.get(name) for name in PINNED_ENV)


def threads_for(unet: torch.nn.Module, latent_pixels: int, available: int | None = None) -> int:
    """The thread count for calls of ``unet`` on ``latent_pixels`` latents (height x width): one for small work,
    else ``available`` (default: ``DEFAULT``, the cores torch started with)."""
    return 1 if small(unet, latent_pixels) else (available or DEFAULT)


def small(unet: torch.nn.Module, latent_pixels: int) -> bool:
    """Whether one call of ``unet`` on ``latent_pixels`` latents is small work (parameters x pixels < SMALL_WORK)."""
    if unet not in _params:
        _params[unet] = sum(p.numel() for p in unet.parameters())
    return _params[unet] * latent_pixels < SMALL_WORK
