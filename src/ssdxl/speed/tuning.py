"""Eager PyTorch settings that measurably help (``docs/performance.md`` has the numbers).

- channels-last memory format for the UNet and VAE: oneDNN's convolutions work in NHWC, so the
  default NCHW layout costs a reorder before and after every convolution on the CPU.

Tried and not kept: the classic attention processor instead of PyTorch's SDPA (within noise at
512², and it materialises the whole attention matrix at 1024²),
``torch.compile`` (minutes of compilation per shape for a 10-30% gain that OpenVINO beats without a
compiler), and VAE tiling by default: it bounds the decoder's memory above the VAE's native size
but changes the image (GroupNorm statistics per tile), so it stays an explicit choice,
``components.vae.enable_tiling()``, which the OpenVINO backend respects by decoding in PyTorch.
"""

from __future__ import annotations

import torch

from ssdxl.models.components import Components


def apply(components: Components, device: torch.device) -> None:
    """Tune the modules of one loaded model in place for ``device``."""
    if device.type == "cpu":
        components.unet.to(memory_format=torch.channels_last)
    apply_vae(components.vae, device)


def apply_vae(vae: torch.nn.Module, device: torch.device) -> None:
    """Tune a VAE in place for ``device`` (also one swapped in after the model was tuned)."""
    if device.type == "cpu":
        vae.to(memory_format=torch.channels_last)
