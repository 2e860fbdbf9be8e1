"""The shapes world must be reproducible, truthfully captioned; held-out stays out of train."""

import itertools

import numpy as np
import pytest

from ssdxl.data.shapes import (
    BACKGROUND_COLOURS,
    HELDOUT_PAIRS,
    HELDOUT_TRIPLES,
    OBJECT_COLOURS,
    POSITION_CELLS,
    SHAPES,
    SIZE_THRESHOLD,
    ShapesWorld,
    caption,
    render,
)


def _scenes(world: ShapesWorld, n: int):
    return list(itertools.islice(world.scenes(), n))


def test_stream_is_deterministic_for_a_seed():
    a = list(itertools.islice(ShapesWorld(seed=3).stream(), 20))
    b = list(itertools.islice(ShapesWorld(seed=3).stream(), 20))
    c = list(itertools.islice(ShapesWorld(seed=4).stream(), 20))
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True))
    assert [s.caption for s in a] != [s.caption for s in c]
    assert ShapesWorld(seed=3).sample(7).caption == a[7].caption


def test_world_covers_the_vocabulary():
    scenes = _scenes(ShapesWorld(seed=0, two_object_fraction=0.3), 2000)
    objs = [o for s in scenes for o in s.objects]
    assert {o.kind for o in objs} == set(SHAPES)
    assert {o.colour for o in objs} == set(OBJECT_COLOURS)
    assert {s.background for s in scenes} == set(BACKGROUND_COLOURS)
    assert {(s.width, s.height) for s in scenes} == {(64, 64), (80, 48), (48, 80)}
    assert {s.relation for s in scenes} == {None, "left of", "right of", "above", "below"}
    assert len({s.caption.split(" ")[0] for s in scenes}) >= 4  # several phrasings


def _third(value: float, limit: int) -> int:
    return min(int(3 * value / limit), 2)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_captions_match_what_is_drawn(split):
    for scene in _scenes(ShapesWorld(seed=1, split=split, two_object_fraction=0.4), 150):
        img = np.asarray(render(scene)).astype(int)
        assert img.shape == (scene.height, scene.width, 3)
        text = scene.caption
        assert f"{scene.background} background" in text
        bg = BACKGROUND_COLOURS[scene.background]
        for y, x in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
            assert tuple(img[y, x]) == bg
        for obj in scene.objects:
            assert f"{obj.colour} {obj.kind}" in text
            cx, cy = obj.centre
            assert tuple(img[int(cy), int(cx)]) == OBJECT_COLOURS[obj.colour]
            assert obj.colour != scene.background
        if scene.relation is None:
            (obj,) = scene.objects
            assert obj.size in text
            assert (obj.size == "large") == (obj.extent / min(scene.width, scene.height) > SIZE_THRESHOLD)
            cx, cy = obj.centre
            assert (_third(cx, scene.width), _third(cy, scene.height)) == POSITION_CELLS[obj.position]
            word = {"centre": "cent"}.get(obj.position, obj.position)
            assert word in text
        else:
            a, b = scene.objects
            assert a.colour != b.colour
            dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
            expected = {"left of": dx > abs(dy), "right of": -dx > abs(dy), "above": dy > abs(dx)}
            assert expected.get(scene.relation, -dy > abs(dx))
            x0, y0, x1, y1 = a.box
            u0, v0, u1, v1 = b.box
            assert x1 < u0 or u1 < x0 or y1 < v0 or v1 < y0  # no overlap
            assert {"left of": "to the left of", "right of": "to the right of"}.get(
                scene.relation, scene.relation
            ) in text


def test_caption_is_a_function_of_the_scene():
    scene = ShapesWorld(seed=2).scene(0)
    assert scene.caption == caption(scene, scene.template)
    assert len({caption(scene, t) for t in range(6)}) == 6


def test_contrast_caption_reverses_only_the_relation():
    scenes = _scenes(ShapesWorld(seed=3, two_object_fraction=0.5), 60)
    opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}
    pairs = [s for s in scenes if s.relation is not None]
    assert pairs and all(s.contrast is None for s in scenes if s.relation is None)
    for scene in pairs:
        true, contrast = scene.caption.split(), scene.contrast.split()
        changed = [(a, b) for a, b in zip(true, contrast, strict=True) if a != b]
        assert len(changed) == 1 and opposite[changed[0][0]] == changed[0][1]


def test_heldout_combinations_never_appear_in_train():
    for scene in _scenes(ShapesWorld(seed=5, split="train", two_object_fraction=0.5), 4000):
        assert not scene.is_heldout
        for obj in scene.objects:
            assert (obj.colour, obj.kind) not in HELDOUT_PAIRS
            assert (obj.colour, obj.kind, scene.background) not in HELDOUT_TRIPLES


def test_heldout_split_only_produces_heldout_and_every_value_is_trained():
    held = _scenes(ShapesWorld(seed=5, split="heldout"), 500)
    assert all(s.is_heldout for s in held)
    shown = {c for s in held for c in s.combinations()}
    assert shown >= HELDOUT_PAIRS | HELDOUT_TRIPLES
    train = _scenes(ShapesWorld(seed=5, split="train"), 3000)
    trained = {c for s in train for c in s.combinations()}
    for colour, kind, *rest in HELDOUT_PAIRS | HELDOUT_TRIPLES:
        assert any(c[0] == colour and len(c) == 2 for c in trained)
        assert any(c[1] == kind and len(c) == 2 for c in trained)
        if rest:
            assert (colour, kind) in trained  # the pair is seen, just not on that background
            assert any(len(c) == 3 and c[0] == colour and c[2] == rest[0] for c in trained)


def test_export_writes_image_caption_pairs(tmp_path):
    world = ShapesWorld(seed=0, sizes=[(64, 64)])
    world.export(tmp_path / "out", 3)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00000.png", "00000.txt", "00001.png", "00001.txt", "00002.png", "00002.txt"]
    assert (tmp_path / "out" / "00001.txt").read_text().strip() == world.sample(1).caption


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        ShapesWorld(split="test")
    with pytest.raises(ValueError):
        ShapesWorld(sizes=[(16, 16)])
