"""Growing a trained UNet into a deeper architecture of the same widths: every weight the two share
is copied, and each transformer layer the deeper one adds starts as the identity.

Why: a deep teacher trained from scratch on a small budget learns slowly (the SDXL-proportioned
run of 2026-11-23 still missed background colours after 1,500 steps), while a grown one starts
exactly where the trained model is and only has to learn what its new depth adds. A
``BasicTransformerBlock`` adds each of its three branches (self-attention, cross-attention,
feed-forward) to its input, so zeroing the last projection of every branch makes the block pass
its input through unchanged; gradients still reach those projections, so the layer wakes up as
training goes on (the zero-initialised residuals of latent diffusion and ControlNet).
"""

from __future__ import annotations

import re

import torch
from diffusers import UNet2DConditionModel

from ssdxl.errors import UserError

NEW_LAYER = re.compile(r"^(?P<stack>.+\.transformer_blocks)\.(?P<index>\d+)\.(?P<rest>.+)$")
BRANCH_OUTPUTS = ("attn1.to_out.0.", "attn2.to_out.0.", "ff.net.2.")  # the last projection of each residual branch


def grow_unet(unet: UNet2DConditionModel, trained: UNet2DConditionModel) -> int:
    """Load ``trained`` into the deeper ``unet`` in place; returns the number of transformer layers added.

    Raises ``UserError`` when ``unet`` is not ``trained`` with deeper transformer stacks (any other
    difference: widths, levels, resnets, a stack that is shallower).
    """
    old = trained.state_dict()
    new = unet.state_dict()
    missing = [k for k in old if k not in new]
    if missing:
        raise UserError(f"cannot grow the UNet: the architecture has no {missing[0]!r}")
    added: set[str] = set()
    for key, value in new.items():
        if key in old:
            if old[key].shape != value.shape:
                raise UserError(f"cannot grow the UNet: {key} is {tuple(old[key].shape)} there, "
                                f"{tuple(value.shape)} here (only transformer depth may grow)")  # fmt: skip
            new[key] = old[key].to(value.dtype)
            continue
        match = NEW_LAYER.match(key)
        if match is None or f"{match['stack']}.0.{match['rest']}" not in old:
            raise UserError(f"cannot grow the UNet: {key} is new and not part of a deeper transformer stack")
        added.add(f"{match['stack']}.{match['index']}")
        if match["rest"].startswith(BRANCH_OUTPUTS):
            new[key] = torch.zeros_like(value)
    unet.load_state_dict(new)
    return len(added)
