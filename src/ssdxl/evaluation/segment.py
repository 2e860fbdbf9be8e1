"""Measure what an image shows: background colour, foreground blobs, and per-blob shape crops.

Pure colour measurement, no knowledge of the intended scene, so generated and real images
are read the same way. The shape classifier and the FID both see a blob through
:func:`crop`: a colour-free "coverage" map, so shape is judged independently of colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from ssdxl.data.shapes import ALL_OBJECT_COLOURS, BACKGROUND_COLOURS

#: A pixel is foreground when this far (RGB distance) from the background; about half the
#: smallest object/background separation the shapes world allows.
FOREGROUND_THRESHOLD = 50.0
#: Blobs smaller than this fraction of the canvas are specks, not objects.
MIN_AREA_FRACTION = 0.003
#: Side of the square coverage crop the shape classifier reads.
CROP = 32


@dataclass(frozen=True)
class Blob:
    """One connected foreground region; ``box`` is (x0, y0, x1, y1) in pixel edges."""

    label: int
    area: int
    box: tuple[int, int, int, int]
    rgb: tuple[float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        # The box centre, not the mask centroid: a triangle's centroid sits low in its box,
        # while the shapes world places (and captions) objects by box.
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def extent(self) -> int:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0)

    @property
    def colour(self) -> str:
        # Novel colours included: a fine-tuned model's pink must read as pink, and a base model
        # never draws it, so on base scenes it only catches colours that were wrong anyway.
        return nearest_name(self.rgb, ALL_OBJECT_COLOURS)


@dataclass(frozen=True)
class Segmentation:
    background_rgb: tuple[float, float, float]
    distance: np.ndarray  # (H, W) RGB distance of each pixel from the background
    labels: np.ndarray  # (H, W) blob label per pixel, 0 = background
    blobs: tuple[Blob, ...]  # largest first

    @property
    def background(self) -> str:
        return nearest_name(self.background_rgb, BACKGROUND_COLOURS)


def nearest_name(rgb: tuple[float, float, float], palette: dict[str, tuple[int, int, int]]) -> str:
    """Name of the palette colour closest to ``rgb``."""
    return min(palette, key=lambda name: float(np.linalg.norm(np.subtract(palette[name], rgb))))


def _background(pixels: np.ndarray) -> np.ndarray:
    """Mode colour of the border: quantise to 16 levels per channel, median of the modal bin."""
    h, w, _ = pixels.shape
    b = max(1, min(h, w) // 32)
    border = np.concatenate(
        [pixels[:b].reshape(-1, 3), pixels[-b:].reshape(-1, 3), pixels[:, :b].reshape(-1, 3)]
        + [pixels[:, -b:].reshape(-1, 3)]
    )
    q = (border // 16).astype(np.int64)
    keys = q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]
    return np.median(border[keys == np.bincount(keys).argmax()], axis=0)


def _rgb(values: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(v) for v in values)
    return (r, g, b)


def segment(image: Image.Image) -> Segmentation:
    """Find the background colour and the foreground blobs of ``image``."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    bg = _background(pixels)
    distance = np.linalg.norm(pixels - bg, axis=2)
    labels, _ = ndimage.label(distance > FOREGROUND_THRESHOLD)
    areas = np.bincount(labels.ravel())
    keep = areas >= max(4.0, MIN_AREA_FRACTION * distance.size)
    keep[0] = False
    labels[~keep[labels]] = 0  # specks are background
    blobs = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        # Colour from the blob's core: anti-aliased rims are a mix with the background.
        d = distance[sl][mask]
        core = pixels[sl][mask][d >= 0.8 * np.percentile(d, 95)]
        box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        blobs.append(Blob(i, int(areas[i]), box, _rgb(np.median(core, axis=0))))
    blobs.sort(key=lambda b: -b.area)
    return Segmentation(_rgb(bg), distance, labels, tuple(blobs))


def crop(seg: Segmentation, blob: Blob | None) -> np.ndarray:
    """``CROP``x``CROP`` coverage map of ``blob`` (1 = its colour, 0 = background), float32.

    Coverage is distance from the background relative to the blob's own colour, so
    anti-aliased edges keep their partial values; other blobs are blanked out. A missing
    blob gives an empty crop (what the classifier and FID see for "nothing drawn").
    """
    if blob is None:
        return np.zeros((CROP, CROP), np.float32)
    scale = max(float(np.linalg.norm(np.subtract(blob.rgb, seg.background_rgb))), FOREGROUND_THRESHOLD)
    alpha = np.clip(seg.distance / scale, 0.0, 1.0)
    alpha[(seg.labels != 0) & (seg.labels != blob.label)] = 0.0
    side = blob.extent * 1.2 + 2
    pad = int(np.ceil(side))
    padded = np.pad(alpha.astype(np.float32), pad)
    cx, cy = blob.centre
    box = (cx - side / 2 + pad, cy - side / 2 + pad, cx + side / 2 + pad, cy + side / 2 + pad)
    out = Image.fromarray(padded).resize((CROP, CROP), Image.Resampling.BILINEAR, box=box)
    return np.asarray(out, dtype=np.float32)
