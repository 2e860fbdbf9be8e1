"""Running an image model tile by tile, so its memory stays bounded whatever the image size.

Tiles overlap; in each overlap the two tiles' outputs are blended with linear ramps (weights that
sum to one everywhere), so seams vanish. The weights are a product of one ramp per axis on a
product grid of tiles, so they are normalised per axis and no full-size weight map is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Evenly spread ``[start, end)`` spans of ``tile`` pixels covering ``length``, overlapping ``overlap`` or more."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = (round(i * (length - tile) / (count - 1)) for i in range(count))
    return [(start, start + tile) for start in starts]


def span_weights(spans: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Each span's blend weight along one axis of the output (``scale`` x the input), summing to one."""
    raw = []
    for i, (start, end) in enumerate(spans):
        weight = torch.ones((end - start) * scale, dtype=torch.float64)
        if i > 0:  # ramp up across the overlap with the previous span
            ramp = (spans[i - 1][1] - start) * scale
            weight[:ramp] = torch.minimum(weight[:ramp], (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp)
        if i + 1 < len(spans):  # ramp down across the overlap with the next one
            ramp = (end - spans[i + 1][0]) * scale
            down = (torch.arange(ramp, 0, -1, dtype=torch.float64) - 0.5) / ramp
            weight[-ramp:] = torch.minimum(weight[-ramp:], down)
        raw.append(weight)
    total = torch.zeros(spans[-1][1] * scale, dtype=torch.float64)
    for (start, _), weight in zip(spans, raw, strict=True):
        total[start * scale : start * scale + len(weight)] += weight
    return [
        (weight / total[start * scale : start * scale + len(weight)]).float()
        for (start, _), weight in zip(spans, raw, strict=True)
    ]


def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    out_channels: int,
    *,
    tile: int,
    overlap: int,
) -> torch.Tensor:
    """``model`` (``(1, C, h, w)`` -> ``(1, out_channels, h*scale, w*scale)``) over ``image`` in overlapping tiles.

    Tiles run on the image's device; the blended result is gathered in float32 on the CPU.
    """
    _, _, height, width = image.shape
    rows, cols = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    row_weights, col_weights = span_weights(rows, scale), span_weights(cols, scale)
    result = torch.zeros(1, out_channels, height * scale, width * scale)
    for (top, bottom), row_weight in zip(rows, row_weights, strict=True):
        for (left, right), col_weight in zip(cols, col_weights, strict=True):
            out = model(image[:, :, top:bottom, left:right]).float().cpu()
            weight = row_weight[:, None] * col_weight[None, :]
            result[:, :, top * scale : bottom * scale, left * scale : right * scale] += out * weight
    return result
