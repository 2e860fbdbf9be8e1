"""Fine-tuning data: the user's images in aspect buckets (with their control maps, for a ControlNet), and
DreamBooth's class images.

The data is checked when the run starts (empty folder, unreadable image, missing caption, an image
smaller than the training resolution), before a model is patched or a file written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ssdxl.data.folder import IMAGE_SUFFIXES, ConditioningImages, ImageCaptionFolder
from ssdxl.data.shapes import ControlMaps, ShapesWorld
from ssdxl.finetune.config import FinetuneConfig
from ssdxl.models.components import Components
from ssdxl.training.data import (
    Batch,
    BucketBatches,
    IndexedSource,
    buckets_at,
    check_resolution,
    data_or_shapes,
    nearest_bucket,
    open_source,
)

CLASS_BATCH = 8  # class images drawn per pipeline call
TWO_OBJECT_FRACTION = 0.4  # shapes world: the built-in model's training mix


def resolution(cfg: FinetuneConfig, parts: Components) -> int:
    return cfg.resolution or int(parts.defaults.get("width", 1024))


def buckets_for(cfg: FinetuneConfig, parts: Components, source: IndexedSource) -> list[tuple[int, int]]:
    side, multiple = resolution(cfg, parts), parts.size_multiple
    if not cfg.buckets:
        check_resolution(side, multiple)
        return [(side, side)]
    return buckets_at(source, side, multiple)


def open_data(cfg: FinetuneConfig) -> IndexedSource:
    """The instance images: ``shapes``, or a folder
    (DreamBooth: every image captioned by the instance prompt; ControlNet: every image with its control map)."""
    data = data_or_shapes(cfg.data, cfg.model, "a folder of captioned images")
    if cfg.mode == "controlnet" and data != "shapes":
        return ImageCaptionFolder(data, conditioning=True)
    caption = cfg.instance_prompt if cfg.mode == "dreambooth" else None
    return open_source(data, cfg.seed, TWO_OBJECT_FRACTION, caption=caption)


@dataclass
class ControlBatch(Batch):
    control: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1]: each image's control map, cut like the image


class ControlBatches:
    """Batches with their control maps, resumable like ``BucketBatches``.

    Two bucket streams with one seed, bucket list and augmentation, over sources whose sample ``i`` has the
    same size (an image and its map), draw the same samples into the same batches with the same crop boxes
    and flips: batch ``k`` of the maps' stream holds the maps of batch ``k``'s images.
    """

    def __init__(self, images: BucketBatches, maps: BucketBatches) -> None:
        self.images, self.maps = images, maps

    def __iter__(self) -> Iterator[ControlBatch]:
        return self

    def __next__(self) -> ControlBatch:
        batch, maps = next(self.images), next(self.maps)
        return ControlBatch(**vars(batch), control=(maps.pixels + 1) / 2)  # to_tensor's [-1, 1] back to [0, 1]

    def state_dict(self) -> dict[str, int]:
        return self.images.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.images.load_state_dict(state)
        self.maps.load_state_dict(state)


def control_maps(cfg: FinetuneConfig, source: IndexedSource) -> IndexedSource:
    """The control maps of ``source``'s samples, as a source sample for sample."""
    if isinstance(source, ShapesWorld):
        return ControlMaps(source, cfg.control_kind)
    assert isinstance(source, ImageCaptionFolder)
    return ConditioningImages(source)


def training_batches(cfg: FinetuneConfig, parts: Components) -> BucketBatches | ControlBatches:
    source = open_data(cfg)
    buckets = buckets_for(cfg, parts, source)
    if isinstance(source, ShapesWorld):  # drawn at the model's own sizes: no enlarged or cropped renders
        source = source.at(buckets)
    if isinstance(source, ImageCaptionFolder) and not cfg.allow_upscale:
        source.check_sizes(lambda size: nearest_bucket(size, buckets))

    def batches(of: IndexedSource) -> BucketBatches:
        return BucketBatches(of, buckets, cfg.batch_size, seed=cfg.seed, crop=cfg.crop, flip=cfg.flip)

    if cfg.mode == "controlnet":
        return ControlBatches(batches(source), batches(control_maps(cfg, source)))
    return batches(source)


def class_folder(cfg: FinetuneConfig) -> Path:
    return Path(cfg.class_data) if cfg.class_data else cfg.run_dir / "class-images"


def prior_batches(cfg: FinetuneConfig, parts: Components) -> BucketBatches | None:
    """The class images of prior preservation, batched like the training images: captioned by
    ``--class-prompt``, or by their own captions (kohya-style regularisation images)."""
    if not cfg.prior:
        return None
    source = ImageCaptionFolder(class_folder(cfg), caption=cfg.class_prompt or None)
    return BucketBatches(source, buckets_for(cfg, parts, source), cfg.batch_size, seed=cfg.seed + 1, flip=cfg.flip)


@torch.no_grad()
def ensure_class_images(cfg: FinetuneConfig, parts: Components, device: torch.device) -> Path:
    """Fill the class folder up to ``num_class_images`` with the model's own images of the class prompt
    (at its default settings, one seed per image), as DreamBooth's prior preservation prescribes."""
    folder = class_folder(cfg)
    if not cfg.class_prompt:  # a folder of captioned regularisation images, used as it is
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    missing = cfg.num_class_images - len(have)
    if missing <= 0:
        return folder
    pipe = parts.diffusers_pipeline().to(device)  # the training device (the loop moves the parts there anyway)
    defaults = parts.defaults
    side = resolution(cfg, parts)
    start = len(have)
    with torch.random.fork_rng(devices=[]):
        for first in range(start, start + missing, CLASS_BATCH):
            count = min(CLASS_BATCH, start + missing - first)
            generators = [torch.Generator().manual_seed(cfg.seed * 100_003 + first + i) for i in range(count)]
            images = pipe(
                prompt=[cfg.class_prompt] * count, width=side, height=side,
                num_inference_steps=int(defaults.get("steps", 30)),
                guidance_scale=float(defaults.get("guidance_scale", 5.0)), generator=generators,
            ).images  # fmt: skip
            for i, image in enumerate(images):
                image.save(folder / f"class_{first + i:05d}.png")
    return folder
