"""Prompt adherence of any text-to-image function, measured on held-out shapes-world scenes.

The suite uses only held-out attribute combinations, so a model trained on
``ShapesWorld(split="train")`` is tested on compositions it never saw. Each prompt is
generated once, judged attribute by attribute (:mod:`ssdxl.evaluation.judge`), and the
generated objects are compared with real renders of the same scenes by FID in the shape
classifier's feature space (:mod:`ssdxl.evaluation.fid`), which sees shape quality that
the yes/no attribute checks saturate on.

:func:`novel_suite` is the same kind of suite for the novel concept (heart, pink) that a
fine-tuning proof teaches: held-out combinations of it that ``concept_scenes(split="train")``
never shows. ``adherence_suite`` is then the control: what the fine-tune must not break.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ssdxl.data.shapes import (
    DEFAULT_SIZES,
    HELDOUT_COMBINATIONS,
    NOVEL_HELDOUT_PAIRS,
    Scene,
    concept_scenes,
    render,
    sample_scene,
)
from ssdxl.evaluation.fid import frechet_distance
from ssdxl.evaluation.judge import Judge

#: generate(prompt, width, height, seed) -> image
Generate = Callable[[str, int, int, int], Image.Image]

#: Report rows in display order; single-only and pair-only attributes are counted where they apply.
ATTRIBUTES = ("background", "colour", "shape", "position", "size", "both_objects", "relation", "all")
#: Stream index of the novel suite's first two-object scene: far from its one-object scenes, so the
#: two parts are independent draws (and neither depends on the other's length).
_NOVEL_PAIRS_START = 1 << 20


def adherence_suite(n_single: int = 50, n_double: int = 50, seed: int = 0) -> list[Scene]:
    """A fixed list of held-out scenes: ``n_single`` one-object then ``n_double`` two-object ones.

    Scenes cycle through ``HELDOUT_COMBINATIONS`` so every held-out combination is tested
    about equally; scene ``i`` depends only on (seed, kind, i).
    """
    suite = []
    for two, n in ((False, n_single), (True, n_double)):
        for i in range(n):
            rng = np.random.default_rng((seed, int(two), i))
            forced = HELDOUT_COMBINATIONS[i % len(HELDOUT_COMBINATIONS)]
            suite.append(sample_scene(rng, two_objects=two, forced=forced))
    return suite


def novel_suite(
    n_single: int = 50,
    n_double: int = 50,
    seed: int = 0,
    heldout: Collection[tuple[str, ...]] = NOVEL_HELDOUT_PAIRS,
) -> list[Scene]:
    """Held-out novel-concept scenes: ``n_single`` one-object then ``n_double`` two-object ones.

    Each shows one of ``heldout`` (cycled, so each is tested about equally), combinations that
    ``concept_scenes(split="train", heldout=heldout)`` -- the fine-tuning set -- never contains.
    """
    singles = concept_scenes(n_single, seed, split="heldout", heldout=heldout)
    doubles = concept_scenes(
        n_double, seed, split="heldout", heldout=heldout, two_object_fraction=1.0, first=_NOVEL_PAIRS_START
    )
    return singles + doubles


@dataclass
class ItemResult:
    prompt: str
    width: int
    height: int
    seed: int
    checks: dict[str, list[bool]]
    seen: dict[str, object]  # what the judge measured, for reading failures


@dataclass
class AdherenceReport:
    """Per-attribute accuracy (fraction of judged instances right), counts, and FID."""

    accuracy: dict[str, float]
    counts: dict[str, int]
    fid: float
    fid_samples: int
    items: list[ItemResult] = field(default_factory=list)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(asdict(self), indent=indent)

    def table(self) -> str:
        """Human-readable summary, one attribute per line."""
        lines = [f"{'attribute':<14}{'accuracy':>10}{'n':>7}"]
        for name in ATTRIBUTES:
            if name in self.accuracy:
                lines.append(f"{name:<14}{self.accuracy[name]:>10.1%}{self.counts[name]:>7}")
        lines.append(f"{'fid':<14}{self.fid:>10.3f}{self.fid_samples:>7}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def suite_scale(defaults: Mapping[str, Any]) -> int:
    """How many times the shapes world's canvas a model draws, from its default settings (a model's
    ``defaults``): 2 for a model made for 128x128 images (``shapes-xl``), 1 for one made for the world's
    own 64x64. The judge reads any size."""
    return max(1, round(int(defaults.get("width", DEFAULT_SIZES[0][0])) / DEFAULT_SIZES[0][0]))


def evaluate(
    generate: Generate, suite: Sequence[Scene], seed: int = 0, judge: Judge | None = None, scale: int = 1
) -> AdherenceReport:
    """Generate every suite prompt (seed ``seed + i`` for scene ``i``, at ``scale`` times the scene's size)
    and measure adherence.

    FID compares the generated objects' shape features with those of real renders of the
    same scenes (a missing object counts as an empty crop).
    """
    judge = judge if judge is not None else Judge()
    images = [generate(s.caption, s.width * scale, s.height * scale, seed + i) for i, s in enumerate(suite)]
    readings = judge.read_many(images, suite)
    real = judge.read_many([render(s) for s in suite], suite)
    verdicts: dict[str, list[bool]] = {}
    items = []
    for i, (scene, reading) in enumerate(zip(suite, readings, strict=True)):
        checks = reading.checks(scene)
        for name, values in checks.items():
            verdicts.setdefault(name, []).extend(values)
        seen = {"background": reading.background, "objects": [asdict(o) for o in reading.objects]}
        if scene.relation is not None:
            seen["relation"] = reading.relation
        width, height = images[i].size
        items.append(ItemResult(scene.caption, width, height, seed + i, checks, seen))
    fake_feats = np.concatenate([r.features for r in readings])
    return AdherenceReport(
        accuracy={k: float(np.mean(v)) for k, v in verdicts.items()},
        counts={k: len(v) for k, v in verdicts.items()},
        fid=frechet_distance(np.concatenate([r.features for r in real]), fake_feats),
        fid_samples=len(fake_feats),
        items=items,
    )
