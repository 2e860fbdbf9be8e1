"""The training data layer: SDXL buckets, random crop and flip with true crop conditioning, exact resume."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssdxl.data.folder import ImageCaptionFolder
from ssdxl.errors import UserError
from ssdxl.training.data import (
    Batch,
    BucketBatches,
    aspect_buckets,
    fit_to_bucket,
    open_source,
    to_tensor,
    used_buckets,
)

SHAPES_BUCKETS = [(64, 64), (80, 48), (48, 80)]
SIZES = [(40, 24), (30, 30), (24, 50), (64, 64), (100, 37), (37, 100), (80, 48), (17, 90), (90, 90), (50, 33)]


@dataclass
class _Sample:
    image: Image.Image
    caption: str


class _Images:
    """A finite in-memory source of noise images (so every crop offset shows in the pixels)."""

    def __init__(self, sizes: list[tuple[int, int]] = SIZES) -> None:
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> _Sample:
        return _Sample(self.images[index], f"image {index}")


def _take(batches: BucketBatches, n: int) -> list[Batch]:
    return [next(batches) for _ in range(n)]


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.pixels, y.pixels) and x.captions == y.captions and torch.equal(x.time_ids, y.time_ids)
        for x, y in zip(a, b, strict=True)
    )


# --- buckets -----------------------------------------------------------------------------------


def test_aspect_buckets_small() -> None:
    assert aspect_buckets(64, 16) == SHAPES_BUCKETS  # what the built-in model trains on


def test_aspect_buckets_sdxl() -> None:
    buckets = aspect_buckets(1024, 64)
    published = [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344)]
    assert set(published) <= set(buckets)
    assert buckets[0] == (1024, 1024) and len(set(buckets)) == len(buckets)
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert max(w / h, h / w) <= 2.0
        assert 0.9 * 1024**2 <= w * h <= 1024**2
    ratios = [max(w / h, h / w) for w, h in buckets]
    assert ratios == sorted(ratios)  # square, then ever wider pairs
    assert buckets[1:3] == [(1088, 960), (960, 1088)]  # landscape then its portrait twin


def test_aspect_buckets_ratio_limit_and_bad_arguments() -> None:
    assert aspect_buckets(1024, 64, max_ratio=1.0) == [(1024, 1024)]
    assert max(max(w / h, h / w) for w, h in aspect_buckets(1024, 64, max_ratio=3.0)) > 2.0
    with pytest.raises(UserError, match="at least its multiple"):
        aspect_buckets(32, 64)
    with pytest.raises(UserError, match="at least 1"):
        aspect_buckets(1024, 64, max_ratio=0.5)


def _folder(tmp_path: Path, sizes: list[tuple[int, int]]) -> ImageCaptionFolder:
    for i, size in enumerate(sizes):
        Image.new("RGB", size).save(tmp_path / f"{i}.png")
    return ImageCaptionFolder(tmp_path, caption="x")


def test_used_buckets_of_square_photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, [(300, 300), (512, 500), (640, 640)])
    monkeypatch.setattr(ImageCaptionFolder, "sample", lambda self, i: pytest.fail("decoded an image"))
    assert used_buckets(folder, aspect_buckets(1024, 64)) == [(1024, 1024)]


def test_used_buckets_keep_order_and_follow_fit_to_bucket(tmp_path: Path) -> None:
    sizes = [(100, 30), (30, 100), (64, 64), (96, 60)]
    buckets = aspect_buckets(64, 16)
    assert used_buckets(_folder(tmp_path, sizes), buckets) == buckets
    assert used_buckets(_Images([(30, 100), (25, 100)]), buckets) == [(48, 80)]  # no image_size: decodes
    for w, h in sizes:  # the same rule as fit_to_bucket
        bucket = used_buckets(_Images([(w, h)]), buckets)
        assert [fit_to_bucket(Image.new("RGB", (w, h)), buckets)[0].size] == bucket


def test_used_buckets_of_an_endless_source() -> None:
    assert used_buckets(open_source("shapes", 0), SHAPES_BUCKETS) == SHAPES_BUCKETS


# --- crop and flip -----------------------------------------------------------------------------


def _resized(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    w, h = image.size
    scale = max(bucket[0] / w, bucket[1] / h)
    size = max(bucket[0], round(w * scale)), max(bucket[1], round(h * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


@pytest.mark.parametrize("size", [(100, 37), (37, 100), (70, 70), (64, 64)])
def test_random_crop_and_flip_record_the_real_offset(size: tuple[int, int]) -> None:
    """time_ids' crop is where the output sits in the (mirrored, when flipped) resized image."""
    image = _Images([size]).images[0]
    for seed in range(6):
        for flip in (False, True):
            out, (oh, ow, top, left, th, tw) = fit_to_bucket(
                image, SHAPES_BUCKETS, "random", flip, np.random.default_rng(seed)
            )
            assert (oh, ow) == (size[1], size[0]) and out.size == (tw, th)
            resized = _resized(image, (tw, th)) if size != (tw, th) else image
            if flip:
                resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            assert 0 <= left <= resized.width - tw and 0 <= top <= resized.height - th
            assert np.array_equal(np.asarray(out), np.asarray(resized.crop((left, top, left + tw, top + th))))


def test_random_crops_vary_and_centre_crop_mirrors() -> None:
    image = _Images([(100, 37)]).images[0]
    lefts = {fit_to_bucket(image, SHAPES_BUCKETS, "random", rng=np.random.default_rng(s))[1][3] for s in range(20)}
    assert len(lefts) > 3  # the resized image is 130 wide, the bucket 80
    straight, ids = fit_to_bucket(image, SHAPES_BUCKETS)
    mirrored, mirrored_ids = fit_to_bucket(image, SHAPES_BUCKETS, flip=True)
    assert np.array_equal(np.asarray(mirrored), np.asarray(straight)[:, ::-1])
    assert ids[3] == 25 and mirrored_ids[3] == 130 - 25 - 80 and mirrored_ids[2] == ids[2]


def test_bad_augment_settings() -> None:
    with pytest.raises(UserError, match="'center' or 'random'"):
        BucketBatches(_Images(), SHAPES_BUCKETS, 2, seed=0, crop="left")
    with pytest.raises(UserError, match="probability"):
        BucketBatches(_Images(), SHAPES_BUCKETS, 2, seed=0, flip=1.5)
    with pytest.raises(UserError, match="not to the 'shapes' world"):
        open_source("shapes", 0, caption="sks")


# --- resume and compatibility ------------------------------------------------------------------


@pytest.mark.parametrize(("crop", "flip"), [("random", 0.5), ("center", 1.0), ("center", 0.0)])
def test_resume_reproduces_augmented_batches(crop: str, flip: float) -> None:
    straight = BucketBatches(_Images(), SHAPES_BUCKETS, 2, seed=4, crop=crop, flip=flip)
    expected = _take(straight, 40)  # several pools and epochs (pool of 48 positions, 10 images)
    for stop in (1, 23, 31):  # within the first pool and past its end
        first = BucketBatches(_Images(), SHAPES_BUCKETS, 2, seed=4, crop=crop, flip=flip)
        got = _take(first, stop)
        resumed = BucketBatches(_Images(), SHAPES_BUCKETS, 2, seed=4, crop=crop, flip=flip)
        resumed.load_state_dict(first.state_dict())
        assert _same(got + _take(resumed, 40 - stop), expected)


def test_augments_differ_between_epochs_and_flip_rate() -> None:
    batches = BucketBatches(_Images(), SHAPES_BUCKETS, 1, seed=4, crop="random", flip=0.5)
    seen: dict[str, set[bytes]] = {}
    plain = {f"image {i}": to_tensor(fit_to_bucket(im, SHAPES_BUCKETS)[0]) for i, im in enumerate(_Images().images)}
    for batch in _take(batches, 200):
        seen.setdefault(batch.captions[0], set()).add(batch.pixels.numpy().tobytes())
    assert any(len(v) > 2 for v in seen.values())  # the same image, other crops and flips in other epochs
    assert len(seen["image 3"]) == 2  # already bucket-sized: no crop to draw, so only flipped or not
    always = BucketBatches(_Images(), SHAPES_BUCKETS, 1, seed=4, flip=1.0)
    for batch in _take(always, 10):
        assert torch.equal(batch.pixels[0], plain[batch.captions[0]].flip(-1))


def _legacy_fit(image: Image.Image, buckets: list[tuple[int, int]]) -> tuple[Image.Image, list[float]]:
    """fit_to_bucket as it was before crop/flip existed, kept to prove the default did not change."""
    w, h = image.size
    bw, bh = min(buckets, key=lambda b: abs(math.log((b[0] / b[1]) / (w / h))))
    if (w, h) != (bw, bh):
        scale = max(bw / w, bh / h)
        rw, rh = max(bw, round(w * scale)), max(bh, round(h * scale))
        left, top = (rw - bw) // 2, (rh - bh) // 2
        image = image.resize((rw, rh), Image.Resampling.LANCZOS).crop((left, top, left + bw, top + bh))
    else:
        left = top = 0
    return image, [h, w, top, left, bh, bw]


def _legacy_batches(source: _Images, buckets: list[tuple[int, int]], batch_size: int, seed: int, n: int) -> list:
    """The batches the pre-augmentation BucketBatches cut from a finite source."""
    pool_size = batch_size * 8 * len(buckets)
    out: list[Batch] = []
    pool = 0
    while len(out) < n:
        by_bucket: dict = {}
        for position in range(pool * pool_size, (pool + 1) * pool_size):
            epoch, within = divmod(position, len(source))
            sample = source.sample(int(np.random.default_rng((seed, 1, epoch)).permutation(len(source))[within]))
            image, ids = _legacy_fit(sample.image, buckets)
            by_bucket.setdefault(image.size, []).append((to_tensor(image), sample.caption, ids))
        made = []
        for items in by_bucket.values():
            for i in range(0, len(items), batch_size):
                chunk = items[i : i + batch_size]
                made.append(
                    Batch(
                        torch.stack([c[0] for c in chunk]),
                        [c[1] for c in chunk],
                        torch.tensor([c[2] for c in chunk], dtype=torch.float32),
                    )
                )
        out += [made[i] for i in np.random.default_rng((seed, 2, pool)).permutation(len(made))]
        pool += 1
    return out[:n]


def test_default_batches_are_unchanged() -> None:
    """Runs saved before crop/flip existed resume onto the very same batches."""
    expected = _legacy_batches(_Images(), SHAPES_BUCKETS, 3, seed=9, n=30)
    assert _same(_take(BucketBatches(_Images(), SHAPES_BUCKETS, 3, seed=9), 30), expected)
    assert _same(_take(BucketBatches(_Images(), SHAPES_BUCKETS, 3, seed=9, crop="center", flip=0.0), 30), expected)
    for size in SIZES:
        image = Image.new("RGB", size, (9, 99, 199))
        new, old = fit_to_bucket(image, SHAPES_BUCKETS), _legacy_fit(image, SHAPES_BUCKETS)
        assert new[1] == old[1] and np.array_equal(np.asarray(new[0]), np.asarray(old[0]))


def test_the_shapes_world_is_drawn_at_the_training_sizes() -> None:
    """A model made for 128x128 learns from sharp 128x128 renders, not enlarged 64x64 ones."""
    from ssdxl.training.data import open_source

    big = open_source("shapes", 0, sizes=[(128, 128), (160, 96)])
    assert {big.sample(i).image.size for i in range(12)} == {(128, 128), (160, 96)}
    assert open_source("shapes", 0).sample(0).image.size in {(64, 64), (80, 48), (48, 80)}
