"""The shapes world: procedural, seeded, infinite, captioned images.

ssdxl trains its default model on this world because every image is fully described by
its caption, so prompt adherence can be *measured* (see ``ssdxl.evaluation``).

A scene is a flat background with either one object (kind, colour, position, size) or two
objects and a spatial relation between them. Every attribute that is drawn is stated in the
caption, and the caption is a pure function of the scene (the phrasing template is part of
the scene).

Vocabulary:

* shapes: circle, square, triangle, star, cross
* object colours: red, orange, yellow, green, cyan, blue, purple, white
* backgrounds: black, gray, navy, white (an object never has the background's colour;
  every object colour is at least ~100 RGB units from every background it appears on)
* positions (single object): left, right, top, bottom, centre -- the object's bounding-box
  centre lies in that cell of the canvas' 3x3 thirds grid (left = middle row, left column)
* sizes (single object): small (24-30% of the canvas' shorter side), large (44-52%)
* relations (two objects): "to the left of", "to the right of", "above", "below"
* canvases (default): 64x64, 80x48, 48x80 (width x height)

Held-out combinations (``HELDOUT_PAIRS`` and ``HELDOUT_TRIPLES``) never occur in
``split="train"``; ``split="heldout"`` produces only scenes containing at least one of them.
Every single colour, shape and background -- and every (colour, background) pair -- is
still seen in training, so the held-out split measures compositional generalisation:

* (colour, shape) on any background: blue triangle, yellow circle, green star,
  purple square, orange cross
* (colour, shape, background): red circle on white, white triangle on navy,
  cyan square on black, yellow star on gray, green cross on navy

``split="all"`` samples without restriction (used to train the evaluation's shape classifier).

Novel vocabulary, for fine-tuning proofs: the shape ``heart`` (``NOVEL_SHAPES``) and the colour
``pink`` (``NOVEL_COLOURS``) are drawable and judged, but ``ShapesWorld`` never samples them, so the
built-in models have never seen them. :func:`concept_scenes` samples scenes that contain them
(``NOVEL_HELDOUT_PAIRS`` kept out of its training split), and :func:`write_scenes` writes any
scene list as an image + caption folder.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

#: Flat RGB values, chosen to stay separable after a lossy VAE (pairwise distance >= ~100).
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 0),
    "yellow": (250, 230, 40),
    "green": (30, 170, 50),
    "cyan": (0, 215, 230),
    "blue": (30, 70, 240),
    "purple": (150, 40, 210),
    "white": (245, 245, 245),
}

BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "gray": (120, 120, 120),
    "navy": (15, 25, 90),
    "white": (245, 245, 245),
}

#: Drawable and judged, never sampled by ``ShapesWorld``: a concept the built-in models never saw.
NOVEL_SHAPES: tuple[str, ...] = ("heart",)
#: Hot pink: >= 127 RGB units from every object colour, >= 148 from every background.
NOVEL_COLOURS: dict[str, tuple[int, int, int]] = {"pink": (255, 105, 180)}
#: Everything render and the judge know: the base vocabulary plus the novel words.
ALL_SHAPES: tuple[str, ...] = SHAPES + NOVEL_SHAPES
ALL_OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {**OBJECT_COLOURS, **NOVEL_COLOURS}
NOVEL_WORDS: tuple[str, ...] = NOVEL_SHAPES + tuple(NOVEL_COLOURS)

POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
SIZES: tuple[str, ...] = ("small", "large")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE_RELATIONS: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

#: (column, row) of each position's cell in the canvas' 3x3 thirds grid.
POSITION_CELLS: dict[str, tuple[int, int]] = {
    "left": (0, 1),
    "right": (2, 1),
    "top": (1, 0),
    "bottom": (1, 2),
    "centre": (1, 1),
}

#: Object extent (largest bounding-box side) as a fraction of the canvas' shorter side.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.24, 0.30), "large": (0.44, 0.52)}
#: Judges split small from large at this extent fraction (midway between the ranges).
SIZE_THRESHOLD = 0.37
#: Extent of each object in a two-object scene (not stated in captions, so kept in one band).
PAIR_SIZE_RANGE = (0.30, 0.36)

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (80, 48), (48, 80))

#: Minimum RGB distance between an object colour and the background it is drawn on.
MIN_BACKGROUND_DISTANCE = 100.0

HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("blue", "triangle"),
        ("yellow", "circle"),
        ("green", "star"),
        ("purple", "square"),
        ("orange", "cross"),
    }
)
HELDOUT_TRIPLES: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "circle", "white"),
        ("white", "triangle", "navy"),
        ("cyan", "square", "black"),
        ("yellow", "star", "gray"),
        ("green", "cross", "navy"),
    }
)

#: Every held-out combination in a fixed order (pairs, then triples).
HELDOUT_COMBINATIONS: tuple[tuple[str, ...], ...] = tuple(sorted(HELDOUT_PAIRS)) + tuple(sorted(HELDOUT_TRIPLES))

#: Novel-concept (colour, shape) pairs kept out of ``concept_scenes(split="train")`` and tested by
#: ``split="heldout"``: hearts in colours never trained with them, pink on shapes never trained pink,
#: and the pink heart, both novel words bound together. Hearts and pink are still trained otherwise.
NOVEL_HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {
        ("pink", "heart"),
        ("green", "heart"),
        ("blue", "heart"),
        ("pink", "triangle"),
        ("pink", "star"),
    }
)


SPLITS: tuple[str, ...] = ("train", "heldout", "all")
#: Seeds ``concept_scenes`` streams apart from every ``ShapesWorld`` stream.
_CONCEPT_STREAM = 1000

_SUPERSAMPLE = 4


def colour_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean RGB distance, the separation measure behind the palette rules."""
    return math.dist(a, b)


def allowed_colours(background: str, palette: dict[str, tuple[int, int, int]] = OBJECT_COLOURS) -> tuple[str, ...]:
    """Colours of ``palette`` that may be drawn on ``background`` (far enough to stay separable).

    The default palette is the base one, so base-world sampling never draws a novel colour.
    """
    bg = BACKGROUND_COLOURS[background]
    return tuple(name for name, rgb in palette.items() if colour_distance(rgb, bg) >= MIN_BACKGROUND_DISTANCE)


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn object. ``box`` is its pixel bounding box (x0, y0, x1, y1), floats.

    ``position`` and ``size`` are set for single-object scenes only (two-object captions
    state the relation instead).
    """

    kind: str
    colour: str
    position: str | None
    size: str | None
    box: tuple[float, float, float, float]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def extent(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0)


@dataclass(frozen=True)
class Scene:
    """A fully specified image: render it with :func:`render`, describe it with ``.caption``.

    With two objects, ``relation`` reads "objects[0] <relation> objects[1]".
    """

    background: str
    objects: tuple[ShapeSpec, ...]
    relation: str | None
    width: int
    height: int
    template: int = 0

    @property
    def caption(self) -> str:
        return caption(self, self.template)

    @property
    def contrast(self) -> str | None:
        """The caption with the relation reversed: what this image is *not* (pairs only).

        Word for word the caption but one word, so a model can only tell them apart by reading
        the relation in context -- which object it binds to which side.
        """
        if self.relation is None:
            return None
        return caption(dataclasses.replace(self, relation=OPPOSITE_RELATIONS[self.relation]), self.template)

    def combinations(self) -> Iterator[tuple[str, ...]]:
        """The (colour, shape) pairs and (colour, shape, background) triples the scene shows."""
        for obj in self.objects:
            yield (obj.colour, obj.kind)
            yield (obj.colour, obj.kind, self.background)

    @property
    def is_heldout(self) -> bool:
        return any(c in HELDOUT_PAIRS or c in HELDOUT_TRIPLES for c in self.combinations())


@dataclass(frozen=True)
class Sample:
    image: Image.Image
    caption: str
    scene: Scene

    @property
    def contrast(self) -> str | None:
        return self.scene.contrast


# ---------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position_phrase(position: str, template: int) -> str:
    # Both spellings of centre appear, so user prompts in either work.
    centre = "centre" if template % 2 == 0 else "center"
    return {
        "left": "on the left",
        "right": "on the right",
        "top": "at the top",
        "bottom": "at the bottom",
        "centre": f"in the {centre}",
    }[position]


def _relation_phrase(relation: str) -> str:
    return {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}[relation]


_SINGLE_TEMPLATES = (
    "a {size} {colour} {shape} {pos} on a {bg} background",
    "{bg} background, {size} {colour} {shape} {pos}",
    "a picture of a {size} {colour} {shape} {pos}, {bg} background",
    "{pos_cap}, a {size} {colour} {shape} on a {bg} background",
    "an image of a {size} {colour} {shape} {pos} against a {bg} background",
    "a {colour} {shape}, {size}, {pos}, {bg} background",
)
_DOUBLE_TEMPLATES = (
    "{a1} {rel} {a2} on a {bg} background",
    "{bg} background, {a1} {rel} {a2}",
    "a picture of {a1} {rel} {a2}, {bg} background",
    "{a1} and {a2} on a {bg} background, the {c1} {s1} {rel} the {c2} {s2}",
    "an image of {a1} {rel} {a2} against a {bg} background",
    "on a {bg} background: {a1} {rel} {a2}",
)
#: Number of phrasings; ``Scene.template`` indexes them (modulo).
N_TEMPLATES = len(_SINGLE_TEMPLATES)
assert len(_DOUBLE_TEMPLATES) == N_TEMPLATES


def caption(scene: Scene, template: int = 0) -> str:
    """Describe ``scene`` with phrasing ``template``; every drawn attribute is stated."""
    t = template % N_TEMPLATES
    if scene.relation is None:
        (obj,) = scene.objects
        assert obj.position is not None and obj.size is not None
        pos = _position_phrase(obj.position, t)
        return _SINGLE_TEMPLATES[t].format(
            size=obj.size,
            colour=obj.colour,
            shape=obj.kind,
            pos=pos,
            pos_cap=pos[0].upper() + pos[1:],
            bg=scene.background,
        )
    a, b = scene.objects
    return _DOUBLE_TEMPLATES[t].format(
        a1=f"{_article(a.colour)} {a.colour} {a.kind}",
        a2=f"{_article(b.colour)} {b.colour} {b.kind}",
        c1=a.colour,
        s1=a.kind,
        c2=b.colour,
        s2=b.kind,
        rel=_relation_phrase(scene.relation),
        bg=scene.background,
    )


# ---------------------------------------------------------------- geometry and rendering


def _unit_outline(kind: str) -> list[tuple[float, float]]:
    """Polygon of ``kind`` centred in the unit box [-0.5, 0.5]^2 (bounding box fills it)."""
    if kind == "square":
        return [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if kind == "triangle":
        return [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)]
    if kind == "cross":
        a = 1 / 6  # arms a third of the extent wide: reads as a cross even at 12 px
        return [
            (-a, -0.5), (a, -0.5), (a, -a), (0.5, -a), (0.5, a), (a, a),
            (a, 0.5), (-a, 0.5), (-a, a), (-0.5, a), (-0.5, -a), (-a, -a),
        ]  # fmt: skip
    if kind == "star":
        # Five points, inner radius half the outer: chunky enough to survive 4x downsampling.
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.5
            ang = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(ang), r * math.sin(ang)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        scale = max(max(xs) - min(xs), max(ys) - min(ys))
        return [((x - cx) / scale, (y - cy) / scale) for x, y in pts]
    if kind == "heart":
        # The classic heart curve, stretched to fill the box; its cleft is a quarter of the
        # height deep, so the two lobes stay apart even at 12 px.
        pts = []
        for i in range(40):
            t = 2 * math.pi * i / 40
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((math.sin(t) ** 3, -y))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        cx, cy = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        return [((x - cx) / w, (y - cy) / h) for x, y in pts]
    raise ValueError(f"unknown shape kind {kind!r}")


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeSpec, fill: tuple[int, int, int]) -> None:
    k = _SUPERSAMPLE
    x0, y0, x1, y1 = (v * k for v in obj.box)
    if obj.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
        return
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    draw.polygon([(cx + u * w, cy + v * h) for u, v in _unit_outline(obj.kind)], fill=fill)


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image: flat colours, edges anti-aliased by 4x box downsampling."""
    k = _SUPERSAMPLE
    img = Image.new("RGB", (scene.width * k, scene.height * k), BACKGROUND_COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj, ALL_OBJECT_COLOURS[obj.colour])
    return img.reduce(k)


#: Control maps of a scene, drawn from its exact geometry (no detector): ``layout`` fills each object's
#: silhouette white on black, ``edges`` draws only their outlines (about 2 px: one inside, one outside).
CONTROL_KINDS: tuple[str, ...] = ("layout", "edges")


def _silhouettes(scene: Scene) -> Image.Image:
    """Every object filled white on black, at the supersampled size (mode ``L``)."""
    k = _SUPERSAMPLE
    mask = Image.new("L", (scene.width * k, scene.height * k), 0)
    draw = ImageDraw.Draw(mask)
    for obj in scene.objects:
        _draw(draw, obj, 255)
    return mask


def control_map(scene: Scene, kind: str = "layout") -> Image.Image:
    """The scene's ``kind`` control map as an RGB image of the scene's size, anti-aliased like ``render``,
    so a ControlNet learns where each object is (and, for ``edges``, its outline) from the true shapes."""
    if kind not in CONTROL_KINDS:
        raise ValueError(f"control map kind must be one of {CONTROL_KINDS}, got {kind!r}")
    mask = _silhouettes(scene)
    if kind == "edges":
        size = 2 * _SUPERSAMPLE + 1  # one output pixel either side of the outline
        mask = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(size)), mask.filter(ImageFilter.MinFilter(size)))
    return mask.reduce(_SUPERSAMPLE).convert("RGB")


def object_mask(scene: Scene) -> np.ndarray:
    """(height, width) booleans: the pixels at least half covered by an object, to score a control's IoU."""
    return np.asarray(_silhouettes(scene).reduce(_SUPERSAMPLE)) >= 128


def _box(cx: float, cy: float, extent: float) -> tuple[float, float, float, float]:
    h = extent / 2
    return (cx - h, cy - h, cx + h, cy + h)


def _clip_centre(c: float, extent: float, limit: int) -> float:
    # Keep the whole object (plus a 1 px margin) inside the canvas.
    lo, hi = extent / 2 + 1, limit - extent / 2 - 1
    return min(max(c, lo), hi)


def _single_box(
    rng: np.random.Generator, position: str, size: str, width: int, height: int
) -> tuple[float, float, float, float]:
    lo, hi = SIZE_RANGES[size]
    extent = float(rng.uniform(lo, hi)) * min(width, height)
    col, row = POSITION_CELLS[position]
    # Centre uniformly in the middle half of the position's thirds cell, then keep it on canvas.
    # Large extents are < 2/3 of the shorter side, so clipping never leaves the cell.
    cx = (col + float(rng.uniform(0.25, 0.75))) * width / 3
    cy = (row + float(rng.uniform(0.25, 0.75))) * height / 3
    return _box(_clip_centre(cx, extent, width), _clip_centre(cy, extent, height), extent)


def _pair_boxes(
    rng: np.random.Generator, relation: str, width: int, height: int
) -> tuple[tuple[float, float, float, float], tuple[float, float, float, float]]:
    """Boxes for objects[0] and objects[1] satisfying ``relation``, non-overlapping.

    The separation along the relation's axis always exceeds the offset across it, so the
    relation is unambiguous when judged by comparing centres.
    """
    extent = float(rng.uniform(*PAIR_SIZE_RANGE)) * min(width, height)
    horizontal = relation in ("left of", "right of")
    along, across = (width, height) if horizontal else (height, width)
    # First object in the first half along the axis, second in the other half, each at least
    # 5% of the axis from the midline: the gap survives blur, so the objects stay two blobs.
    lo, hi = extent / 2 + 1, along / 2 - extent / 2 - 0.05 * along
    first = min(max(float(rng.uniform(0.15, 0.35)) * along, lo), hi)
    second = along - min(max(float(rng.uniform(0.15, 0.35)) * along, lo), hi)
    offsets = [across / 2 + float(rng.uniform(-0.06, 0.06)) * across for _ in range(2)]
    if relation in ("right of", "below"):
        first, second = second, first
    if horizontal:
        return _box(first, offsets[0], extent), _box(second, offsets[1], extent)
    return _box(offsets[0], first, extent), _box(offsets[1], second, extent)


def sample_scene(
    rng: np.random.Generator,
    two_objects: bool,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    forced: tuple[str, ...] | None = None,
) -> Scene:
    """Sample a scene uniformly, without split rules.

    ``forced`` -- a (colour, shape) pair or (colour, shape, background) triple, e.g. from
    ``HELDOUT_COMBINATIONS`` -- puts that combination in the scene (in a random slot of a pair).
    """
    width, height = sizes[int(rng.integers(len(sizes)))]
    template = int(rng.integers(N_TEMPLATES))

    if forced is not None and len(forced) == 3:
        background = forced[2]
    else:
        backgrounds = list(BACKGROUND_COLOURS)
        if forced is not None:
            backgrounds = [b for b in backgrounds if forced[0] in allowed_colours(b)]
        background = backgrounds[int(rng.integers(len(backgrounds)))]
    colours = allowed_colours(background)

    def pick(exclude: str | None) -> tuple[str, str]:
        pool = [c for c in colours if c != exclude]
        return pool[int(rng.integers(len(pool)))], SHAPES[int(rng.integers(len(SHAPES)))]

    if not two_objects:
        colour, kind = forced[:2] if forced is not None else pick(None)
        position = POSITIONS[int(rng.integers(len(POSITIONS)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        box = _single_box(rng, position, size, width, height)
        return Scene(background, (ShapeSpec(kind, colour, position, size, box),), None, width, height, template)

    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    first = forced[:2] if forced is not None else pick(None)
    second = pick(first[0])  # distinct colours keep the two objects separable
    if forced is not None and rng.random() < 0.5:
        first, second = second, first
    box_a, box_b = _pair_boxes(rng, relation, width, height)
    objects = (
        ShapeSpec(first[1], first[0], None, None, box_a),
        ShapeSpec(second[1], second[0], None, None, box_b),
    )
    return Scene(background, objects, relation, width, height, template)


class ShapesWorld:
    """An infinite, deterministic stream of captioned shape scenes.

    Sample ``i`` depends only on (seed, split, i), so streams are reproducible and
    :meth:`sample` gives random access without replaying the stream.
    """

    def __init__(
        self,
        seed: int = 0,
        split: str = "train",
        sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
        two_object_fraction: float = 0.3,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not sizes or any(w < 32 or h < 32 for w, h in sizes):
            raise ValueError(f"canvas sizes must be at least 32x32, got {list(sizes)}")
        if not 0.0 <= two_object_fraction <= 1.0:
            raise ValueError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
        self.seed = seed
        self.split = split
        self.sizes = tuple((int(w), int(h)) for w, h in sizes)
        self.two_object_fraction = two_object_fraction

    def at(self, sizes: Sequence[tuple[int, int]]) -> ShapesWorld:
        """The same world drawn on other canvases (a model's training buckets): sharp renders at its own sizes."""
        return ShapesWorld(self.seed, self.split, sizes, self.two_object_fraction)

    def scene(self, index: int) -> Scene:
        """Scene ``index`` of the stream, without rendering (cheap)."""
        rng = np.random.default_rng((self.seed, SPLITS.index(self.split), index))
        if self.split == "heldout":
            forced = HELDOUT_COMBINATIONS[int(rng.integers(len(HELDOUT_COMBINATIONS)))]
            return sample_scene(rng, self._two(rng), self.sizes, forced)
        while True:
            scene = sample_scene(rng, self._two(rng), self.sizes)
            if self.split == "all" or not scene.is_heldout:
                return scene

    def _two(self, rng: np.random.Generator) -> bool:
        return bool(rng.random() < self.two_object_fraction)

    def sample(self, index: int) -> Sample:
        scene = self.scene(index)
        return Sample(render(scene), scene.caption, scene)

    def scenes(self) -> Iterator[Scene]:
        """Infinite stream of scenes only (fast: no rendering)."""
        return map(self.scene, itertools.count())

    def stream(self) -> Iterator[Sample]:
        """Infinite stream of rendered samples, identical for identical arguments."""
        return map(self.sample, itertools.count())

    def export(self, folder: str | Path, n: int) -> None:
        """Write the first ``n`` samples as ``00000.png`` + ``00000.txt`` pairs (the image-folder format)."""
        write_scenes(map(self.scene, range(n)), folder)


@dataclass(frozen=True)
class ControlMaps:
    """A world's control maps as an endless source of their own: sample ``i`` is sample ``i``'s ``kind`` map,
    with its caption and size, so one bucket stream cuts an image and its map alike (ControlNet training)."""

    world: ShapesWorld
    kind: str = "layout"

    def sample(self, index: int) -> Sample:
        scene = self.world.scene(index)
        return Sample(control_map(scene, self.kind), scene.caption, scene)


def write_scenes(scenes: Iterable[Scene], folder: str | Path) -> int:
    """Render ``scenes`` to ``00000.png`` + ``00000.txt`` pairs in ``folder`` (what ``--data FOLDER`` reads).

    Returns how many were written, so a fine-tuning set of any scene list is one call.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for i, scene in enumerate(scenes):
        render(scene).save(out / f"{i:05d}.png")
        (out / f"{i:05d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
        count += 1
    return count


def _check_names(what: str, values: Iterable[object], known: Iterable[object]) -> None:
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown {what}: {sorted(map(str, unknown))}")


def concept_scenes(
    n: int,
    seed: int = 0,
    *,
    split: str = "all",
    concept: Collection[str] = NOVEL_WORDS,
    heldout: Collection[tuple[str, ...]] = NOVEL_HELDOUT_PAIRS,
    shapes: Sequence[str] = ALL_SHAPES,
    colours: Sequence[str] = tuple(ALL_OBJECT_COLOURS),
    backgrounds: Sequence[str] = tuple(BACKGROUND_COLOURS),
    positions: Sequence[str] = POSITIONS,
    object_sizes: Sequence[str] = SIZES,
    relations: Sequence[str] = RELATIONS,
    two_object_fraction: float = 0.0,
    canvases: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    first: int = 0,
) -> list[Scene]:
    """Scenes ``first`` .. ``first + n - 1`` of a stream in which every scene shows a novel concept.

    A separate stream from ``ShapesWorld`` (which never draws the novel words), so fine-tuning sets
    and their test prompts can be built without touching what the built-in models were trained on.

    * Every scene has an object whose shape or colour is in ``concept``. Objects are drawn from
      ``shapes`` x ``colours`` (colours far enough from the background), on one of ``backgrounds``,
      placed as ``positions``, ``object_sizes`` and ``relations`` allow; ``two_object_fraction`` of
      the scenes hold two objects of different colours. Captions use the usual phrasings.
    * ``split="train"``: no object shows a combination in ``heldout`` nor a base held-out one
      (``HELDOUT_PAIRS``/``HELDOUT_TRIPLES``), so neither test suite leaks into fine-tuning.
    * ``split="heldout"``: scene ``i`` shows ``sorted(heldout)[i % len(heldout)]``, a (colour, shape)
      pair or (colour, shape, background) triple that must name a ``concept`` word; it may lie outside
      the restricted lists (which then only restrict the background and the other object).
    * ``split="all"``: no combination rule.

    Scene ``i`` depends only on (seed, split, i) and the restrictions, not on ``n``: ``first`` gives
    disjoint stretches of one stream.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= two_object_fraction <= 1.0:
        raise ValueError(f"two_object_fraction must be in [0, 1], got {two_object_fraction}")
    if not canvases or any(w < 32 or h < 32 for w, h in canvases):
        raise ValueError(f"canvas sizes must be at least 32x32, got {list(canvases)}")
    for what, values, known in (
        ("concept words", concept, (*ALL_SHAPES, *ALL_OBJECT_COLOURS)),
        ("shapes", shapes, ALL_SHAPES),
        ("colours", colours, ALL_OBJECT_COLOURS),
        ("backgrounds", backgrounds, BACKGROUND_COLOURS),
        ("positions", positions, POSITIONS),
        ("sizes", object_sizes, SIZES),
        ("relations", relations, RELATIONS),
    ):
        if not values:
            raise ValueError(f"no {what} to draw from")
        _check_names(what, values, known)
    forced_list = sorted(heldout)
    if split == "heldout":
        if not forced_list:
            raise ValueError('split="heldout" needs at least one held-out combination')
        for combo in forced_list:
            _check_names("shapes", combo[1:2], ALL_SHAPES)
            _check_names("colours", combo[:1], ALL_OBJECT_COLOURS)
            _check_names("backgrounds", combo[2:], BACKGROUND_COLOURS)
            if not set(combo[:2]) & set(concept):
                raise ValueError(f"held-out combination {combo} names no concept word of {sorted(concept)}")
    banned = set(heldout) | HELDOUT_PAIRS | HELDOUT_TRIPLES if split == "train" else set()
    palette = {c: ALL_OBJECT_COLOURS[c] for c in colours}

    def shown(colour: str, kind: str, background: str) -> bool:
        return (colour, kind) not in banned and (colour, kind, background) not in banned

    def objects_on(background: str, forced: tuple[str, ...] | None) -> list[tuple[str, str]]:
        """(colour, shape) options for the concept object on ``background``."""
        if forced is not None:
            fits = forced[0] in allowed_colours(background, ALL_OBJECT_COLOURS) and forced[2:] in ((), (background,))
            return [(forced[0], forced[1])] if fits else []
        return [
            (c, k)
            for c in allowed_colours(background, palette)
            for k in shapes
            if (c in concept or k in concept) and shown(c, k, background)
        ]

    scenes = []
    for index in range(first, first + n):
        rng = np.random.default_rng((seed, _CONCEPT_STREAM + SPLITS.index(split), index))
        width, height = canvases[int(rng.integers(len(canvases)))]
        template = int(rng.integers(N_TEMPLATES))
        two = bool(rng.random() < two_object_fraction)
        forced = forced_list[index % len(forced_list)] if split == "heldout" else None
        options = [forced[2]] if forced is not None and len(forced) == 3 else list(backgrounds)
        options = [b for b in options if objects_on(b, forced)]
        if not options:
            raise ValueError(f"no background allows a concept object (held-out combination {forced})")
        background = options[int(rng.integers(len(options)))]
        candidates = objects_on(background, forced)
        colour, kind = candidates[int(rng.integers(len(candidates)))]
        if not two:
            position = positions[int(rng.integers(len(positions)))]
            size = object_sizes[int(rng.integers(len(object_sizes)))]
            box = _single_box(rng, position, size, width, height)
            objects: tuple[ShapeSpec, ...] = (ShapeSpec(kind, colour, position, size, box),)
            scenes.append(Scene(background, objects, None, width, height, template))
            continue
        partners = [
            (c, k)
            for c in allowed_colours(background, palette)
            for k in shapes
            if c != colour and shown(c, k, background)
        ]
        if not partners:
            raise ValueError(f"no second object fits beside a {colour} {kind} on {background}")
        pair = [(colour, kind), partners[int(rng.integers(len(partners)))]]
        if rng.random() < 0.5:
            pair.reverse()
        relation = relations[int(rng.integers(len(relations)))]
        box_a, box_b = _pair_boxes(rng, relation, width, height)
        objects = (
            ShapeSpec(pair[0][1], pair[0][0], None, None, box_a),
            ShapeSpec(pair[1][1], pair[1][0], None, None, box_b),
        )
        scenes.append(Scene(background, objects, relation, width, height, template))
    return scenes
