"""DeepCache-style feature caching: between full UNet calls, recompute only the shallowest level.

Adjacent denoising steps change the deep, low-resolution features of a UNet very little (DeepCache,
Ma et al. 2023). A full call records the input of the last up block (everything the deep levels
produced); the next ``interval - 1`` calls run only ``conv_in``, the first down block, the last up
block and the output head, feeding it the recorded feature. The deep blocks are skipped by
replacing their ``forward`` for the duration of the call, so diffusers' own ``forward`` runs
unchanged for every UNet layout (SDXL, SSD-1B, Vega, refiner).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel


class DeepCacheUNet:
    """Wraps a UNet for one denoising run; call it as the UNet. ``interval`` 1 never reuses."""

    def __init__(self, unet: UNet2DConditionModel, interval: int):
        if interval < 1:
            raise ValueError(f"cache interval must be >= 1, got {interval}")
        self.unet = unet
        self.interval = interval
        self.full_calls = 0
        self._feature: torch.Tensor | None = None
        self._age = 0

    @property
    def config(self) -> Any:
        return self.unet.config

    def __call__(self, sample: torch.Tensor, timestep: Any, **kwargs: Any) -> Any:
        fresh = self._feature is not None and self._feature.shape[0] == sample.shape[0]
        if fresh and self._age < self.interval - 1:
            self._age += 1
            with skipping_deep_blocks(self.unet, self._feature):
                return self.unet(sample, timestep, **kwargs)
        self._age = 0
        self.full_calls += 1
        with capturing_deep_feature(self.unet) as captured:
            out = self.unet(sample, timestep, **kwargs)
        self._feature = captured[0]
        return out


@contextmanager
def capturing_deep_feature(unet: UNet2DConditionModel) -> Iterator[list[torch.Tensor]]:
    """Yields a list that holds, after the call, the hidden states entering the last up block."""
    captured: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        captured.append(kwargs["hidden_states"])

    handle = unet.up_blocks[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield captured
    finally:
        handle.remove()


@contextmanager
def skipping_deep_blocks(unet: UNet2DConditionModel, feature: torch.Tensor) -> Iterator[None]:
    """Every block but the first down and last up block returns placeholders; the one before the last
    up block hands it ``feature``. Placeholders are never read: the last up block takes only the
    first down block's residuals, which are computed for real."""

    def down(block: torch.nn.Module):
        # as many residuals as the block really makes, so the up blocks pop exactly theirs
        count = len(block.resnets) + len(getattr(block, "downsamplers", None) or [])
        return lambda *_args, **_kwargs: (feature, (feature,) * count)

    def other(*_args: Any, **_kwargs: Any) -> torch.Tensor:
        return feature

    skipped: list[tuple[torch.nn.Module, Any]] = [(block, down(block)) for block in unet.down_blocks[1:]]
    skipped += [(block, other) for block in [unet.mid_block, *unet.up_blocks[:-1]] if block is not None]
    for block, stub in skipped:
        block.forward = stub
    try:
        yield
    finally:
        for block, _ in skipped:
            del block.forward
