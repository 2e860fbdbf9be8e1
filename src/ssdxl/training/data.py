"""Training batches: same-size images (SDXL aspect buckets), captions and SDXL size conditioning.

A source is anything with ``sample(index)`` returning an object with ``.image`` (PIL) and
``.caption``: the shapes world (infinite) or an ``ImageCaptionFolder`` (finite, also ``len``).
Batches are cut from *pools* of consecutive sample indices, so the position in the data is two
integers (pool, batch) and ``--resume`` continues with exactly the batches an uninterrupted run
would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from ssdxl.errors import UserError
from ssdxl.models import builtin

POOL_BATCHES_PER_BUCKET = 8  # a pool holds about this many batches of each bucket


class CaptionedImage(Protocol):
    """A training sample. A source may also give ``contrast``: a caption the image does *not* fit."""

    image: Image.Image
    caption: str


class IndexedSource(Protocol):
    def sample(self, index: int) -> CaptionedImage: ...


def data_or_shapes(data: str | None, model: str | None, wanted: str) -> str:
    """``data``, or ``"shapes"`` when none is given and ``model`` is a built-in one (the world it learned); any other
    model needs ``--data``, and ``wanted`` says what kind of folder."""
    if data:
        return data
    if builtin.resolve(model) is None:
        raise UserError(f"--data: give {wanted} (the 'shapes' world only suits the built-in models)")
    return "shapes"


def open_source(
    data: str,
    seed: int,
    two_object_fraction: float = 0.3,
    split: str = "train",
    caption: str | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> IndexedSource:
    """``"shapes"`` is the procedural world; anything else is a folder of images + captions.

    ``caption`` captions every folder image alike (DreamBooth); the shapes world writes its own, and
    draws its scenes at ``sizes`` ((W, H) canvases; default its own 64x64-class ones), so a model made
    for larger images learns from sharp renders rather than enlarged ones.
    """
    if data == "shapes":
        if caption is not None:
            raise UserError("a fixed caption applies to a folder of images, not to the 'shapes' world")
        from ssdxl.data.shapes import DEFAULT_SIZES, ShapesWorld

        canvases = DEFAULT_SIZES if sizes is None else sizes
        return ShapesWorld(seed=seed, split=split, two_object_fraction=two_object_fraction, sizes=canvases)
    from ssdxl.data.folder import ImageCaptionFolder

    if not Path(data).exists():
        raise UserError(f"--data must be 'shapes' or an existing folder of images + captions; got {data!r}")
    return ImageCaptionFolder(data, caption=caption)


@dataclass
class Batch:
    pixels: torch.Tensor  # (B, 3, H, W) in [-1, 1], one bucket size
    captions: list[str]
    time_ids: torch.Tensor  # (B, 6): original (h, w), crop top-left (top, left), target (h, w)
    contrasts: list[str | None] | None = None  # per image, a near-miss caption it does not fit


def aspect_buckets(resolution: int, multiple: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """SDXL-style (W, H) buckets of about ``resolution``² pixels, sides multiples of ``multiple``.

    Each width above the square gets the tallest height that keeps the area at or under resolution²
    (which reproduces SDXL's published 1024 buckets), plus its portrait twin, while W/H <= ``max_ratio``.
    Square first, then pairs by growing aspect ratio, so ``buckets[0]`` is the natural default size.
    """
    if multiple <= 0 or resolution < multiple:
        raise UserError(f"bucket resolution {resolution} must be at least its multiple {multiple} (> 0)")
    if max_ratio < 1:
        raise UserError(f"bucket max aspect ratio must be at least 1; got {max_ratio}")
    side = resolution // multiple * multiple
    buckets = [(side, side)]
    width = side + multiple
    while True:
        height = resolution * resolution // width // multiple * multiple
        if height < multiple or width / height > max_ratio:
            break
        for bucket in ((width, height), (height, width)):
            if bucket not in buckets:
                buckets.append(bucket)
        width += multiple
    return buckets


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) that of a ``(W, H)`` image."""
    w, h = size
    return min(buckets, key=lambda b: abs(math.log((b[0] / b[1]) / (w / h))))


def check_resolution(side: int, multiple: int) -> None:
    """A training side the model can take (a multiple of its latent downscale times its UNet's)."""
    if side % multiple:
        raise UserError(f"--resolution {side} must be a multiple of {multiple} for this model")


def buckets_at(source: IndexedSource, side: int, multiple: int) -> list[tuple[int, int]]:
    """The aspect buckets around ``side`` that some image of ``source`` uses, once ``side`` is checked."""
    check_resolution(side, multiple)
    return used_buckets(source, aspect_buckets(side, multiple))


def used_buckets(source: IndexedSource, buckets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The buckets (in their given order) some image of ``source`` maps to: a square-photo set trains at one size.

    Reads only image headers when the source offers ``image_size`` (a folder). An endless source
    (the shapes world) has no end to survey, so it keeps all buckets.
    """
    if not hasattr(source, "__len__"):
        return list(buckets)
    size_of = getattr(source, "image_size", None)
    used = set()
    for index in range(len(source)):  # type: ignore[arg-type]
        size = size_of(index) if size_of is not None else source.sample(index).image.size
        used.add(nearest_bucket(size, buckets))
    return [b for b in dict.fromkeys(buckets) if b in used]


def fit_to_bucket(
    image: Image.Image,
    buckets: list[tuple[int, int]],
    crop: str = "center",
    flip: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[Image.Image, list[float]]:
    """Resize-and-crop ``image`` to the bucket nearest its aspect ratio, optionally mirrored.

    Returns the bucket-sized image and its SDXL ``time_ids`` (original size, crop top-left in
    the resized image, target size), so the model learns what each image really was. ``crop="random"``
    draws the offset from ``rng``. A mirrored image records the crop's left edge in the mirrored resized
    image (``resized_w - left - target_w``): the same crop it would be had the flip come before the crop,
    as diffusers' current SDXL scripts do (their older ``x1 = image.width - x1``, after a crop, used the
    cropped width and could go negative).
    """
    w, h = image.size
    bw, bh = nearest_bucket((w, h), buckets)
    rw = bw
    if (w, h) != (bw, bh):
        scale = max(bw / w, bh / h)
        rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
        if crop == "random":
            if rng is None:
                raise ValueError("a random crop needs a numpy Generator")
            top, left = int(rng.integers(rh - bh + 1)), int(rng.integers(rw - bw + 1))
        else:
            left, top = (rw - bw) // 2, (rh - bh) // 2
        image = image.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + bw, top + bh))
    else:
        left = top = 0
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = rw - left - bw
    return image, [h, w, top, left, bh, bw]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float in [-1, 1], the VAE's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


class BucketBatches:
    """An endless, resumable iterator of ``Batch``es, every batch one bucket size.

    ``crop="random"`` and ``flip`` (a probability) augment each image from a generator seeded by
    ``(seed, 3, global position)``, so a resumed run redraws exactly the crops and flips it would have.
    The defaults draw nothing and give the batches this class always gave.
    """

    def __init__(
        self,
        source: IndexedSource,
        buckets: list[tuple[int, int]],
        batch_size: int,
        seed: int,
        crop: str = "center",
        flip: float = 0.0,
    ) -> None:
        if crop not in ("center", "random"):
            raise UserError(f"crop must be 'center' or 'random'; got {crop!r}")
        if not 0.0 <= flip <= 1.0:
            raise UserError(f"flip is a probability between 0 and 1; got {flip}")
        self.crop = crop
        self.flip = flip
        self.source = source
        self.buckets = buckets
        self.batch_size = batch_size
        self.seed = seed
        self.pool_size = batch_size * POOL_BATCHES_PER_BUCKET * len(buckets)
        self.length: int | None = len(source) if hasattr(source, "__len__") else None  # type: ignore[arg-type]
        # An endless source drops each bucket's short remainder (there is always more data);
        # a folder keeps it, so every image is seen once per epoch.
        self.keep_remainders = self.length is not None
        self.pool = 0
        self.offset = 0  # next batch within the pool
        self._batches: list[Batch] | None = None
        self._order: tuple[int, np.ndarray] = (-1, np.arange(0))  # (epoch, its permutation)

    def state_dict(self) -> dict[str, int]:
        return {"pool": self.pool, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pool, self.offset, self._batches = int(state["pool"]), int(state["offset"]), None

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self._make_pool(self.pool)
        batch = self._batches[self.offset]
        self.offset += 1
        if self.offset == len(self._batches):
            self.pool, self.offset, self._batches = self.pool + 1, 0, None
        return batch

    def _index(self, position: int) -> int:
        """Sample index at a global position: in order for endless sources, reshuffled per epoch otherwise."""
        if self.length is None:
            return position
        epoch, within = divmod(position, self.length)
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng((self.seed, 1, epoch)).permutation(self.length))
        return int(self._order[1][within])

    def _make_pool(self, pool: int) -> list[Batch]:
        by_bucket: dict[tuple[int, int], list[tuple[torch.Tensor, str, list[float], str | None]]] = {}
        start = pool * self.pool_size
        for position in range(start, start + self.pool_size):
            sample = self.source.sample(self._index(position))
            if self.crop == "center" and self.flip == 0:
                image, time_ids = fit_to_bucket(sample.image, self.buckets)
            else:
                rng = np.random.default_rng((self.seed, 3, position))
                flip = bool(rng.random() < self.flip)  # drawn first: the crops don't depend on the flip rate
                image, time_ids = fit_to_bucket(sample.image, self.buckets, self.crop, flip, rng)
            contrast = getattr(sample, "contrast", None)
            by_bucket.setdefault(image.size, []).append((to_tensor(image), sample.caption, time_ids, contrast))
        batches = []
        for items in by_bucket.values():
            full = len(items) if self.keep_remainders else len(items) - len(items) % self.batch_size
            for i in range(0, full, self.batch_size):
                chunk = items[i : i + self.batch_size]
                batches.append(
                    Batch(
                        pixels=torch.stack([c[0] for c in chunk]),
                        captions=[c[1] for c in chunk],
                        time_ids=torch.tensor([c[2] for c in chunk], dtype=torch.float32),
                        contrasts=[c[3] for c in chunk],
                    )
                )
        order = np.random.default_rng((self.seed, 2, pool)).permutation(len(batches))
        return [batches[i] for i in order]


def fixed_batches(source: IndexedSource, buckets: list[tuple[int, int]], count: int, batch_size: int) -> list[Batch]:
    """The first ``count`` samples of ``source`` as bucketed batches: a fixed evaluation set."""
    stream = BucketBatches(source, buckets, batch_size, seed=0)
    stream.pool_size, stream.keep_remainders = count, True
    return stream._make_pool(0)
