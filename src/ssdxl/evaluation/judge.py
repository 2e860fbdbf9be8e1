"""Judge an image against the scene it was meant to show, one measured attribute at a time.

Background: mode colour of the border. Objects: the largest foreground blobs; colour is the
nearest palette colour to a blob's core, shape comes from the shape classifier, position is
the thirds-grid cell of the blob's box centre, size its extent against ``SIZE_THRESHOLD``.
For two objects, blobs are matched to the intended objects by colour (then shape), and the
relation is read from the matched blobs' centres along the dominant axis.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ssdxl.data.shapes import SIZE_THRESHOLD, Scene
from ssdxl.evaluation.classifier import ShapeClassifier, classify, load_shape_classifier
from ssdxl.evaluation.segment import Blob, crop, segment

_CELLS = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)


@dataclass(frozen=True)
class ObjectReading:
    """What the judge sees where an intended object should be; all None when nothing was found."""

    colour: str | None
    kind: str | None
    position: str | None
    size: str | None
    centre: tuple[float, float] | None


@dataclass(frozen=True)
class SceneReading:
    background: str
    objects: tuple[ObjectReading, ...]  # aligned with the intended scene's objects
    relation: str | None  # objects[0] relative to objects[1]; None unless both were found
    features: np.ndarray  # (len(objects), FEATURES): shape-classifier features, for FID

    def checks(self, scene: Scene) -> dict[str, list[bool]]:
        """Per attribute, one verdict per judged instance (two for colour/shape in a pair)."""
        colour = [r.colour == o.colour for r, o in zip(self.objects, scene.objects, strict=True)]
        shape = [r.kind == o.kind for r, o in zip(self.objects, scene.objects, strict=True)]
        out = {"background": [self.background == scene.background], "colour": colour, "shape": shape}
        if scene.relation is None:
            (r,), (o,) = self.objects, scene.objects
            out["position"] = [r.position == o.position]
            out["size"] = [r.size == o.size]
        else:
            out["both_objects"] = [all(colour) and all(shape)]
            out["relation"] = [self.relation == scene.relation]
        out["all"] = [all(all(v) for v in out.values())]
        return out


def _position(centre: tuple[float, float], width: int, height: int) -> str:
    col = min(int(3 * centre[0] / width), 2)
    row = min(int(3 * centre[1] / height), 2)
    return _CELLS[row][col]


def _relation(a: tuple[float, float], b: tuple[float, float]) -> str:
    dx, dy = b[0] - a[0], b[1] - a[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _match(blobs: tuple[Blob, ...], kinds: list[str], scene: Scene) -> tuple[int | None, ...]:
    """Blob index (or None: missing) per intended object, agreeing most on colour, then shape.

    ``blobs`` holds at most one blob per intended object. Ties keep the largest-first order.
    """
    slots = list(range(len(blobs))) + [None] * (len(scene.objects) - len(blobs))

    def score(assign: tuple[int | None, ...]) -> tuple[int, int]:
        pairs = [(i, o) for i, o in zip(assign, scene.objects, strict=True) if i is not None]
        return (
            sum(blobs[i].colour == o.colour for i, o in pairs),
            sum(kinds[i] == o.kind for i, o in pairs),
        )

    return max(itertools.permutations(slots), key=score)


@dataclass(frozen=True)
class _Measured:
    """Everything read from one image except the shape classification."""

    background: str
    size: tuple[int, int]
    blobs: tuple[Blob, ...]  # at most one per intended object, largest first
    crops: np.ndarray  # one per blob, then an empty crop (stands in for missing objects)


def _measure(image: Image.Image, scene: Scene) -> _Measured:
    seg = segment(image)
    blobs = seg.blobs[: len(scene.objects)]
    crops = np.stack([crop(seg, b) for b in blobs] + [crop(seg, None)])
    return _Measured(seg.background, image.size, blobs, crops)


def _read(m: _Measured, kinds: list[str], feats: np.ndarray, scene: Scene) -> SceneReading:
    width, height = m.size
    assign = _match(m.blobs, kinds, scene)
    readings = []
    for i in assign:
        if i is None:
            readings.append(ObjectReading(None, None, None, None, None))
            continue
        b = m.blobs[i]
        size = "large" if b.extent / min(width, height) > SIZE_THRESHOLD else "small"
        readings.append(ObjectReading(b.colour, kinds[i], _position(b.centre, width, height), size, b.centre))
    relation = None
    if len(readings) == 2 and readings[0].centre is not None and readings[1].centre is not None:
        relation = _relation(readings[0].centre, readings[1].centre)
    features = feats[[len(m.blobs) if i is None else i for i in assign]]
    return SceneReading(m.background, tuple(readings), relation, features)


class Judge:
    """Reads images against intended scenes; holds the shape classifier (loaded once)."""

    def __init__(self, classifier: ShapeClassifier | None = None) -> None:
        self.classifier = classifier if classifier is not None else load_shape_classifier()

    def __call__(self, image: Image.Image, scene: Scene) -> SceneReading:
        """Measure ``image`` (any size; read in its own coordinates) against ``scene``."""
        return self.read_many([image], [scene])[0]

    def read_many(self, images: Sequence[Image.Image], scenes: Sequence[Scene]) -> list[SceneReading]:
        """Like calling the judge per image, with one classifier pass for all (much faster)."""
        measured = [_measure(image, scene) for image, scene in zip(images, scenes, strict=True)]
        kinds, feats = classify(self.classifier, np.concatenate([m.crops for m in measured]))
        readings, start = [], 0
        for m, scene in zip(measured, scenes, strict=True):
            end = start + len(m.crops)
            readings.append(_read(m, kinds[start:end], feats[start:end], scene))
            start = end
        return readings
