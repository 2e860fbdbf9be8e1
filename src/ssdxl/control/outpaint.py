"""Outpainting as inpainting on a larger canvas: the picture pasted where it was, the new border filled
with a smooth continuation of its edge colours (OpenCV's Telea inpainting) so the model starts from
plausible colours rather than a flat fill, and two masks.

- ``paint``: what the denoiser repaints: the new border, reaching ``overlap`` pixels into the picture so
  the model can join its strokes to the old edge;
- ``keep``: the final composite, which puts back every original pixel exactly (the seam is the model's
  to match: it repainted the overlap knowing the picture).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ssdxl.errors import UserError
from ssdxl.sampling.limits import MAX_SIDE, canvas_size, check_canvas

SIDES = ("left", "top", "right", "bottom")
MAX_GROW = 2048  # pixels a side may grow by in one request
OVERLAP = 8  # pixels of the picture the denoiser may repaint at the seam (one latent pixel)


@dataclass
class Canvas:
    image: Image.Image  # the grown picture, new border filled
    paint: Image.Image  # L mask: white where the denoiser paints
    keep: Image.Image  # L mask for the final composite: black on every original pixel


def check_sides(
    sides: tuple[int, int, int, int], init: Image.Image | None, mask: Image.Image | None, max_side: int = MAX_SIDE
) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) growth, checked: whole pixels, none negative, some growth, an image, and a
    grown canvas within ``max_side`` a side (``check_canvas``: a FieldError under ``outpaint``)."""
    if init is None:
        raise UserError("outpainting needs an init image to grow")
    if mask is not None:
        raise UserError("outpainting makes its own mask; leave the mask out")
    if len(sides) != 4 or any(int(v) != v for v in sides):
        raise UserError(f"outpaint takes four whole pixel counts (left, top, right, bottom); got {sides}")
    sides = tuple(int(v) for v in sides)
    if min(sides) < 0 or max(sides) > MAX_GROW or not any(sides):
        raise UserError(f"outpaint sides must be between 0 and {MAX_GROW} pixels, at least one above 0; got {sides}")
    check_canvas(init.size, sides, "outpaint", max_side)  # the grown canvas is the image made
    return sides


def parse_sides(text: str) -> tuple[int, int, int, int]:
    """``left=256,right=256`` (``all=128``; ``x=``/``y=``: both sides of an axis) as (left, top, right, bottom)."""
    grow = dict.fromkeys(SIDES, 0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        targets = {"all": SIDES, "x": ("left", "right"), "y": ("top", "bottom")}.get(name.strip(), (name.strip(),))
        if not value.strip().isdigit() or any(t not in SIDES for t in targets):
            raise UserError(
                f"outpaint: expected side=pixels with side in {', '.join(SIDES)}, x, y or all; got {part!r}"
            )
        for target in targets:
            grow[target] = int(value)
    return tuple(grow[s] for s in SIDES)


def grow(image: Image.Image, sides: tuple[int, int, int, int], *, overlap: int = OVERLAP) -> Canvas:
    left, top, _, _ = sides
    width, height = canvas_size(image.size, sides)
    rgb = np.asarray(image.convert("RGB"))
    canvas = cv2.copyMakeBorder(rgb, top, sides[3], left, sides[2], cv2.BORDER_REPLICATE)
    new = np.full((height, width), 255, np.uint8)
    new[top : top + image.height, left : left + image.width] = 0
    canvas = cv2.inpaint(canvas, new, 3, cv2.INPAINT_TELEA)
    paint = cv2.dilate(new, np.ones((2 * overlap + 1,) * 2, np.uint8)) if overlap else new
    return Canvas(Image.fromarray(canvas), Image.fromarray(paint), Image.fromarray(new))
