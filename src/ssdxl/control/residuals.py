"""What a batch's control units add to one UNet call: ControlNet residuals and T2I-Adapter features.

Each unit acts between its ``start`` and ``end`` fraction of the steps (diffusers' ``controlnet_keep``).
Several units' residuals are summed, as diffusers' ``MultiControlNetModel`` and ``MultiAdapter`` sum them.
Under classifier-free guidance the UNet batch is [uncond rows | cond rows]; a unit's map is shared by
both halves, except in guess mode, where the ControlNet runs on the conditional half only and the
unconditional half gets zeros (diffusers' guess mode, A1111's "ControlNet is more important").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import ControlNetUnionModel, T2IAdapter
from PIL import Image

from ssdxl.conditioning.prompt import Conditioning
from ssdxl.control.models import ControlModel

RESIZE_MODES = {"resize": "default", "crop": "crop", "fill": "fill"}  # ours -> VaeImageProcessor's resize_mode


def control_tensor(image: Image.Image, width: int, height: int, resize_mode: str = "resize") -> torch.Tensor:
    """A control map as the model reads it: RGB in [0, 1], [1, 3, height, width], fitted as ``resize_mode`` says
    (stretched; scaled to cover and centre-cropped; scaled to fit and padded), as diffusers prepares it."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(do_convert_rgb=True, do_normalize=False)
    return processor.preprocess(image.convert("RGB"), height=height, width=width, resize_mode=RESIZE_MODES[resize_mode])


@dataclass
class ActiveControl:
    """One control unit of a batch, ready to run: the model and its maps, one row per image."""

    model: ControlModel
    hint: torch.Tensor  # [rows, C, H, W] in [0, 1]
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    type_index: int | None = None  # union models: which condition the map is
    _features: dict[int, list[torch.Tensor]] = field(default_factory=dict, repr=False)

    def acts_at(self, step: int, steps: int) -> bool:
        return not (step / steps < self.start or (step + 1) / steps > self.end)


class ControlStack:
    """The units of one batch; ``unet_kwargs`` is what they add to the UNet call at a step."""

    def __init__(self, units: list[ActiveControl]):
        self.units = units

    def unet_kwargs(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, step: int, steps: int) -> dict:
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        features: list[torch.Tensor] | None = None
        for unit in self.units:
            if not unit.acts_at(step, steps):
                continue
            halves = x.shape[0] // unit.hint.shape[0]  # 2 under classifier-free guidance
            if isinstance(unit.model, T2IAdapter):
                features = _add(features, _adapter_features(unit, halves))
                continue
            unit_down, unit_mid = _controlnet_residuals(unit, x, t, cond, halves)
            down = _add(down, unit_down)
            mid = unit_mid if mid is None else mid + unit_mid
        kwargs: dict = {}
        if down is not None:
            kwargs |= {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        if features is not None:
            kwargs["down_intrablock_additional_residuals"] = [f.clone() for f in features]  # the UNet pops them
        return kwargs


def _controlnet_residuals(
    unit: ActiveControl, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, halves: int
) -> tuple[list[torch.Tensor], torch.Tensor]:
    only_cond = unit.guess_mode and halves == 2
    if only_cond:
        rows = slice(x.shape[0] // 2, None)
        x, cond = x[rows], cond.rows(rows)
        hint = unit.hint
    else:
        hint = unit.hint.repeat(halves, 1, 1, 1)
    sdxl = cond.pooled is not None
    kwargs = {
        "encoder_hidden_states": cond.embeds,
        "added_cond_kwargs": {"text_embeds": cond.pooled, "time_ids": cond.time_ids} if sdxl else None,
        "conditioning_scale": unit.scale,
        "guess_mode": unit.guess_mode,
        "return_dict": False,
    }
    if isinstance(unit.model, ControlNetUnionModel):
        one_hot = torch.zeros(x.shape[0], unit.model.config.num_control_type, device=x.device, dtype=x.dtype)
        one_hot[:, unit.type_index] = 1
        kwargs |= {"controlnet_cond": [hint], "control_type": one_hot, "control_type_idx": [unit.type_index]}
    else:
        kwargs["controlnet_cond"] = hint
    down, mid = unit.model(x, t, **kwargs)
    if only_cond:
        down = [torch.cat([torch.zeros_like(d), d]) for d in down]
        mid = torch.cat([torch.zeros_like(mid), mid])
    return list(down), mid


def _adapter_features(unit: ActiveControl, halves: int) -> list[torch.Tensor]:
    """A T2I-Adapter's features do not depend on the step: computed once per batch shape, then reused."""
    if halves not in unit._features:
        features = [f * unit.scale for f in unit.model(unit.hint)]
        unit._features[halves] = [torch.cat([f] * halves) for f in features]
    return unit._features[halves]


def _add(total: list[torch.Tensor] | None, more: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(more) if total is None else [a + b for a, b in zip(total, more, strict=True)]
