"""A small CNN that names the shape in a coverage crop; its penultimate layer is the FID space.

Trained on crops of real shapes-world renders (most blurred, noised and JPEG-compressed, so
the soft, noisy output of a small VAE still reads correctly). The shipped weights
(``shape_classifier.safetensors``) are regenerated deterministically with::

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

from ssdxl.data.shapes import SHAPES, ShapesWorld, render
from ssdxl.evaluation.segment import CROP, crop, segment

WEIGHTS = Path(__file__).with_name("shape_classifier.safetensors")
FEATURES = 64


class ShapeClassifier(nn.Module):
    """(N, 1, CROP, CROP) coverage crops -> logits over ``SHAPES`` (89k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(64 * (CROP // 8) ** 2, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, len(SHAPES))

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
    names = [SHAPES[i] for i in model.head(feats).argmax(1).tolist()]
    return names, feats.numpy()


def _degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # Blur, noise and JPEG blocking stand in for what a small VAE does to edges and flat areas.
    pixels = np.asarray(image, np.float64)
    pixels = ndimage.gaussian_filter(pixels, sigma=(rng.uniform(0.0, 1.2),) * 2 + (0.0,))
    pixels = np.clip(pixels + rng.normal(0.0, rng.uniform(0.0, 12.0), pixels.shape), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(40, 95)))
    return Image.open(buf).convert("RGB")


def real_crops(seed: int, n_images: int, degrade: bool) -> tuple[np.ndarray, np.ndarray]:
    """Coverage crops and shape labels of every object in ``n_images`` renders (``split="all"``)."""
    world = ShapesWorld(seed=seed, split="all", two_object_fraction=0.3)
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(n_images):
        scene = world.scene(i)
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
            ys.append(SHAPES.index(obj.kind))
    return np.stack(xs), np.array(ys)


def accuracy(model: ShapeClassifier, crops: np.ndarray, labels: np.ndarray) -> float:
    names, _ = classify(model, crops)
    return float(np.mean([SHAPES.index(n) == y for n, y in zip(names, labels, strict=True)]))


def train_shape_classifier(seed: int = 0, n_images: int = 10000, epochs: int = 8, batch: int = 128) -> ShapeClassifier:
    """Train from scratch on degraded and clean real crops; deterministic for ``seed``."""
    torch.manual_seed(seed)
    x, y = real_crops(seed, n_images, degrade=True)
    xt = torch.from_numpy(x).unsqueeze(1)
    yt = torch.from_numpy(y)
    model = ShapeClassifier()
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
    return model.eval()
