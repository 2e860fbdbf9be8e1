"""Measured layer importance: how much the teacher's prediction changes when one layer is skipped.

``select="importance"`` keeps, in each shortened stack, the layers whose absence hurts most. A
skipped layer passes its input through unchanged (a forward hook returns the input), so its
residual contribution is all that is removed. Cost: one teacher pass per candidate layer per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from ssdxl.distill.inputs import UNetInputs


@torch.no_grad()
def layer_importance(unet: UNet2DConditionModel, stacks: list[str], inputs: list[UNetInputs]) -> dict[str, list[float]]:
    """For each stack, per layer: mean squared change of the UNet's output when that layer is skipped."""
    reference = [unet(**x.kwargs()).sample.float() for x in inputs]

    def change() -> float:
        diffs = [
            F.mse_loss(unet(**x.kwargs()).sample.float(), ref).item() for x, ref in zip(inputs, reference, strict=True)
        ]
        return sum(diffs) / len(diffs)

    scores: dict[str, list[float]] = {}
    for stack in stacks:
        scores[stack] = []
        for layer in unet.get_submodule(stack).transformer_blocks:
            handle = layer.register_forward_hook(_pass_through, with_kwargs=True)
            try:
                scores[stack].append(change())
            finally:
                handle.remove()
    return scores


def _pass_through(_module: torch.nn.Module, args: tuple, kwargs: dict, _output: torch.Tensor) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]
