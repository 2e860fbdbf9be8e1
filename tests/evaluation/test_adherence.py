"""The adherence judge must score true renders perfect, catch wrong ones, and FID must separate real from junk."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ssdxl.data.shapes import HELDOUT_COMBINATIONS, Scene, render
from ssdxl.evaluation import Judge, adherence_suite, evaluate, frechet_distance
from ssdxl.evaluation.adherence import suite_scale


@pytest.fixture(scope="module")
def judge():
    return Judge()


@pytest.fixture(scope="module")
def suite():
    return adherence_suite(n_single=30, n_double=30, seed=0)


def _by_prompt(suite):
    table = {s.caption: s for s in suite}
    return lambda prompt, width, height, seed: render(table[prompt])


def test_suite_is_fixed_and_held_out(suite):
    assert adherence_suite(n_single=30, n_double=30, seed=0) == suite
    assert adherence_suite(n_single=30, n_double=30, seed=1) != suite
    assert sum(s.relation is None for s in suite) == 30
    assert all(s.is_heldout for s in suite)
    shown = {c for s in suite for c in s.combinations()}
    assert set(HELDOUT_COMBINATIONS) <= shown


def test_real_renders_score_perfectly(judge, suite):
    report = evaluate(_by_prompt(suite), suite, judge=judge)
    assert report.accuracy == {k: 1.0 for k in report.accuracy}
    assert set(report.accuracy) == {
        "background", "colour", "shape", "position", "size", "both_objects", "relation", "all"
    }  # fmt: skip
    assert report.counts["background"] == 60 and report.counts["colour"] == 90
    assert report.counts["position"] == 30 and report.counts["relation"] == 30
    assert report.fid < 1.0
    data = json.loads(report.to_json())
    assert data["fid_samples"] == 90 and len(data["items"]) == 60
    assert "relation" in report.table()


def test_a_model_for_larger_images_is_asked_for_them_and_judged_alike(judge, suite):
    """shapes-xl draws 128x128: the suite asks for twice each scene's size and the judge reads it in its own
    coordinates."""
    table = {s.caption: s for s in suite[::6]}
    asked = []

    def generate(prompt, width, height, seed):
        asked.append((width, height))
        image = render(table[prompt])
        return image.resize((width, height), Image.Resampling.LANCZOS)

    report = evaluate(generate, list(table.values()), judge=judge, scale=suite_scale({"width": 128}))
    assert asked == [(s.width * 2, s.height * 2) for s in table.values()]
    assert report.accuracy == {k: 1.0 for k in report.accuracy}
    assert [(i.width, i.height) for i in report.items] == asked
    assert suite_scale({"width": 64}) == 1 and suite_scale({"width": 1024}) == 16 and suite_scale({}) == 1


def _features(judge, images, scenes):
    return np.concatenate([r.features for r in judge.read_many(images, scenes)])


def test_fid_is_small_for_real_and_large_for_junk(judge, suite):
    real = _features(judge, [render(s) for s in suite], suite)
    other = adherence_suite(n_single=30, n_double=30, seed=1)
    other_real = _features(judge, [render(s) for s in other], other)
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (s.height, s.width, 3), dtype=np.uint8)) for s in suite]
    blank = [Image.new("RGB", (s.width, s.height), (10, 10, 10)) for s in suite]
    real_fid = frechet_distance(real, other_real)
    assert real_fid * 10 < frechet_distance(real, _features(judge, noise, suite))
    assert real_fid * 10 < frechet_distance(real, _features(judge, blank, suite))


def _recolour(scene: Scene, index: int, colour: str) -> Scene:
    objects = list(scene.objects)
    objects[index] = dataclasses.replace(objects[index], colour=colour)
    return dataclasses.replace(scene, objects=tuple(objects))


def test_wrong_images_are_judged_wrong(judge, suite):
    single = next(s for s in suite if s.relation is None and s.objects[0].colour != "red" and s.background != "white")
    checks = judge(render(_recolour(single, 0, "red")), single).checks(single)
    assert checks["colour"] == [False] and checks["all"] == [False]
    assert checks["shape"] == checks["position"] == checks["size"] == checks["background"] == [True]

    wrong_kind = "circle" if single.objects[0].kind != "circle" else "square"
    drawn = dataclasses.replace(single, objects=(dataclasses.replace(single.objects[0], kind=wrong_kind),))
    checks = judge(render(drawn), single).checks(single)
    assert checks["shape"] == [False] and checks["colour"] == [True]

    pair = next(s for s in suite if s.relation is not None)
    a, b = pair.objects
    swapped = dataclasses.replace(  # same objects, places exchanged
        pair, objects=(dataclasses.replace(a, box=b.box), dataclasses.replace(b, box=a.box))
    )
    checks = judge(render(swapped), pair).checks(pair)
    assert checks["relation"] == [False] and checks["both_objects"] == [True]

    lone = dataclasses.replace(pair, objects=pair.objects[:1], relation=None)
    checks = judge(render(lone), pair).checks(pair)
    assert checks["both_objects"] == [False] and checks["relation"] == [False]
