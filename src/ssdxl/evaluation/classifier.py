"""A small CNN that names the shape in a coverage crop; its penultimate layer is the FID space.

Trained on crops of real shapes-world renders (most blurred, noised and JPEG-compressed, so
the soft, noisy output of a small VAE still reads correctly), in two stages:

1. the base shapes, from scratch: the first shipped classifier, regenerated bit for bit;
2. one more logit per novel shape (heart, from :func:`ssdxl.data.shapes.concept_scenes`),
   trained on the frozen stage-1 features.

So the FID space and the base logits are the first classifier's: FIDs stay comparable with
earlier reports, and on any crop the judge says what it said before unless it now says heart.
The shipped weights (``shape_classifier.safetensors``) are regenerated deterministically with::

    python -m ssdxl.evaluation.train_classifier
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from scipy import ndimage
from torch import nn

from ssdxl.data.shapes import ALL_SHAPES, SHAPES, ShapesWorld, concept_scenes, render
from ssdxl.evaluation.segment import CROP, crop, segment

WEIGHTS = Path(__file__).with_name("shape_classifier.safetensors")
FEATURES = 64
#: Share of stage-2 training images drawn from ``concept_scenes`` (about one object in six is a
#: heart, as many as each base shape), the rest from the base world.
NOVEL_FRACTION = 0.3


class ShapeClassifier(nn.Module):
    """(N, 1, CROP, CROP) coverage crops -> logits over ``ALL_SHAPES`` (89k parameters).

    ``n_classes`` is only smaller while training stage 1 (the base ``SHAPES``).
    """

    def __init__(self, n_classes: int = len(ALL_SHAPES)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * (CROP // 8) ** 2, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: the space FID is measured in."""
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_shape_classifier(path: str | Path = WEIGHTS) -> ShapeClassifier:
    model = ShapeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def classify(model: ShapeClassifier, crops: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Shape names and penultimate features for (N, CROP, CROP) crops."""
    x = torch.from_numpy(np.asarray(crops, np.float32)).reshape(-1, 1, CROP, CROP)
    feats = model.features(x)
    names = [ALL_SHAPES[i] for i in model.head(feats).argmax(1).tolist()]
    return names, feats.numpy()


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # Blur, noise and JPEG blocking stand in for what a small VAE does to edges and flat areas.
    pixels = np.asarray(image, np.float64)
    pixels = ndimage.gaussian_filter(pixels, sigma=(rng.uniform(0.0, 1.2),) * 2 + (0.0,))
    pixels = np.clip(pixels + rng.normal(0.0, rng.uniform(0.0, 12.0), pixels.shape), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(40, 95)))
    return Image.open(buf).convert("RGB")


def real_crops(
    seed: int, n_images: int, degrade: bool, novel_fraction: float = NOVEL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage crops and shape labels of every object in ``n_images`` renders.

    ``novel_fraction`` of the images are ``concept_scenes`` (hearts, pink), spread evenly; the rest
    are base-world ``split="all"`` scenes 0, 1, 2, ... -- so ``novel_fraction=0`` gives exactly the
    base-only crops the first classifier was trained and measured on.
    """
    world = ShapesWorld(seed=seed, split="all", two_object_fraction=0.3)
    n_novel = int(n_images * novel_fraction)
    novel = iter(concept_scenes(n_novel, seed, two_object_fraction=0.3))
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    base_index = 0
    for i in range(n_images):
        if int((i + 1) * novel_fraction) > int(i * novel_fraction):
            scene = next(novel)
        else:
            scene = world.scene(base_index)
            base_index += 1
        image = render(scene)
        if degrade and rng.random() < 0.7:
            image = _degrade(image, rng)
        seg = segment(image)
        for obj in scene.objects:
            if not seg.blobs:
                continue
            ox, oy = obj.centre
            blob = min(seg.blobs, key=lambda b: (b.centre[0] - ox) ** 2 + (b.centre[1] - oy) ** 2)
            xs.append(crop(seg, blob))
            ys.append(ALL_SHAPES.index(obj.kind))
    return np.stack(xs), np.array(ys)


def accuracy(model: ShapeClassifier, crops: np.ndarray, labels: np.ndarray) -> float:
    names, _ = classify(model, crops)
    return float(np.mean([ALL_SHAPES.index(n) == y for n, y in zip(names, labels, strict=True)]))


def per_class_accuracy(model: ShapeClassifier, crops: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy per true shape (present ones only): an overall figure can hide one weak class."""
    names, _ = classify(model, crops)
    right = np.array([ALL_SHAPES.index(n) == y for n, y in zip(names, labels, strict=True)])
    return {kind: float(right[labels == k].mean()) for k, kind in enumerate(ALL_SHAPES) if (labels == k).any()}


def train_shape_classifier(seed: int = 0, n_images: int = 10000, epochs: int = 8, batch: int = 128) -> ShapeClassifier:
    """Both stages (see the module docstring) on degraded and clean real crops; deterministic for ``seed``."""
    torch.manual_seed(seed)
    x, y = real_crops(seed, n_images, degrade=True, novel_fraction=0.0)
    xt = torch.from_numpy(x).unsqueeze(1)
    yt = torch.from_numpy(y)
    model = ShapeClassifier(len(SHAPES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for j in range(len(x) // batch):
            idx = order[j * batch : (j + 1) * batch]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return _add_novel_shapes(model.eval(), seed, n_images, epochs, batch)


def _add_novel_shapes(base: ShapeClassifier, seed: int, n_images: int, epochs: int, batch: int) -> ShapeClassifier:
    """Stage 2: a logit per novel shape on the frozen features; base rows and features stay as they are."""
    x, y = real_crops(seed, n_images, degrade=True, novel_fraction=NOVEL_FRACTION)
    with torch.no_grad():
        feats = base.features(torch.from_numpy(x).unsqueeze(1))
        base_logits = base.head(feats)
    yt = torch.from_numpy(y)
    torch.manual_seed(seed)
    novel = nn.Linear(FEATURES, len(ALL_SHAPES) - len(SHAPES))
    opt = torch.optim.AdamW(novel.parameters(), lr=5e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for j in range(len(x) // batch):
            idx = order[j * batch : (j + 1) * batch]
            logits = torch.cat([base_logits[idx], novel(feats[idx])], dim=1)
            loss = nn.functional.cross_entropy(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model = ShapeClassifier()
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("head.")}
    state["head.weight"] = torch.cat([base.head.weight.detach(), novel.weight.detach()])
    state["head.bias"] = torch.cat([base.head.bias.detach(), novel.bias.detach()])
    model.load_state_dict(state)
    return model.eval()
