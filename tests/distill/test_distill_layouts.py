"""Layouts: the published SSD-1B / Vega UNets from SDXL base, exactly; the same rules on smaller
teachers; custom layout files; students that are not part of their teacher are refused."""

from __future__ import annotations

import json

import pytest

from ssdxl.distill.layout import Layout, resolve_layout
from ssdxl.distill.student import make_plan
from ssdxl.errors import UserError
from ssdxl.models.presets import get_preset, unet_stats
from ssdxl.training.config import architecture

PUBLISHED = {"ssd-1b": (1_331_334_404, 34), "vega": (745_225_604, 15)}


@pytest.mark.parametrize("name", ["ssd-1b", "vega"])
@pytest.mark.parametrize("scale", ["full", "tiny"])
def test_layouts_on_sdxl_base_give_the_published_unets(name: str, scale: str) -> None:
    teacher = get_preset("sdxl-base", scale).unet
    _, layout = resolve_layout(name, Layout.of(teacher))
    config = layout.unet_config(teacher)
    published = get_preset(name, scale).unet
    assert {k: config.get(k) for k in published} == published  # the very config, not just the counts
    assert unet_stats(config) == unet_stats(published)
    if scale == "full":
        assert unet_stats(config) == PUBLISHED[name]


def test_layout_reads_back_from_the_config_it_writes() -> None:
    teacher = get_preset("sdxl-base").unet
    for name in ("ssd-1b", "vega"):
        _, layout = resolve_layout(name, Layout.of(teacher))
        assert Layout.of(layout.unet_config(teacher)) == layout
    assert Layout.of(get_preset("ssd-1b").unet).up == ((4, 4, 10), (2, 1, 1), (0, 0, 0))


@pytest.mark.parametrize("arch", ["builtin", "tiny"])
def test_relative_rules_shrink_depth_one_teachers_and_keep_cross_attention(arch: str) -> None:
    preset, _ = architecture(arch)
    teacher = Layout.of(preset.unet)
    params = {"teacher": unet_stats(preset.unet)[0]}
    layouts = {}
    for name in ("ssd-1b", "vega"):
        _, layouts[name] = resolve_layout(name, teacher)
        params[name] = unet_stats(layouts[name].unet_config(preset.unet))[0]
        assert layouts[name].mid == "resnet"  # both drop the mid attention
        assert any(map(any, layouts[name].up))  # text still reaches the UNet through cross-attention
    assert params["teacher"] > params["ssd-1b"] >= params["vega"]
    if arch == "builtin":  # 3 levels, depth 1: SSD-1B-like drops the deepest down attention, Vega-like both sides
        assert layouts["ssd-1b"].down == ((0,), (1,), (0,)) and layouts["ssd-1b"].up == ((1, 1), (1, 1), (0, 0))
        assert layouts["vega"].down == ((0,), (1,), (0,)) and layouts["vega"].up == ((0, 0), (1, 1), (0, 0))
        assert params["ssd-1b"] / params["teacher"] == pytest.approx(0.847, abs=0.001)
        assert params["vega"] / params["teacher"] == pytest.approx(0.743, abs=0.001)


def test_relative_rules_shorten_deeper_teachers_proportionally(teacher_preset) -> None:
    teacher = Layout.of(teacher_preset.unet)  # depth 4 at its one attention level
    _, ssd = resolve_layout("ssd-1b", teacher)
    _, vega = resolve_layout("vega", teacher)
    assert ssd.down[1] == (2, 2) and ssd.up[0] == (2, 2, 4)  # 40% rounds to 2; the last up unit keeps all
    assert vega.down[1] == (1, 1) and vega.up[0] == (1, 1, 1)
    assert teacher.transformer_layers == 24 and ssd.transformer_layers == 12 and vega.transformer_layers == 5


def test_custom_layout_files_absolute_json_and_relative_yaml(teacher_preset, tmp_path) -> None:
    teacher = Layout.of(teacher_preset.unet)
    absolute = tmp_path / "one-resnet.json"  # one resnet per level, depth 3, mid block removed
    absolute.write_text(json.dumps({"down": [[0], [3]], "up": [[3, 3], [0, 0]], "mid": "none"}))
    name, layout = resolve_layout(str(absolute), teacher)
    assert name == "one-resnet" and layout.down == ((0,), (3,)) and layout.mid == "none"
    config = layout.unet_config(teacher_preset.unet)
    assert config["layers_per_block"] == 1 and config["mid_block_type"] is None

    relative = tmp_path / "half.yaml"
    relative.write_text("mid: attention\ndown_keep: [[0.5, 0.5]]\nup_keep: [[0.5, 0.5, 0.5]]\n")
    _, half = resolve_layout(str(relative), teacher)
    assert half.down[1] == (2, 2) and half.up[0] == (2, 2, 2)
    assert half.mid == "attention" and half.mid_depth == 2  # diffusers ties it to the deepest down stack


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"down": [[0, 0], [2, 0]], "up": [[2, 2, 2], [0, 0, 0]], "mid": "resnet"}, "mix attention"),
        ({"down": [[0, 0], [2, 2]], "up": [[2, 2], [0, 0, 0]], "mid": "resnet"}, "up units"),
        ({"down": [[0, 0], [2, 2]], "up": [[2, 2, 2], [0, 0, 0]], "mid": "attention", "mid_depth": 3}, "mid block"),
        ({"down": [[0, 0], [5, 5]], "up": [[5, 5, 5], [0, 0, 0]], "mid": "resnet"}, "wants 5 transformer layers"),
        ({"down": [[0, 0, 0], [1, 1]], "up": [[1, 1, 1], [0, 0, 0, 0]], "mid": "resnet"}, "wants 3 resnets"),
        ({"down": [[0, 0], [1, 1]], "up": [[1, 1, 1], [1, 1, 1]], "mid": "resnet"}, "wants 1 transformer"),
    ],
)
def test_impossible_students_are_refused(teacher_preset, layout, message) -> None:
    with pytest.raises(UserError, match=message):
        make_plan(Layout.of(teacher_preset.unet), Layout.from_dict(layout))


def test_named_layouts_apply_to_the_first_teacher_so_stages_nest() -> None:
    root = Layout.of(get_preset("sdxl-base").unet)
    _, ssd = resolve_layout("ssd-1b", root)
    _, vega = resolve_layout("vega", root)
    plan = make_plan(ssd, vega)  # stage 2 of SDXL -> SSD-1B -> Vega: Vega is a part of SSD-1B
    assert plan.student == vega
    assert [u.layers for u in plan.side("up") if u.block == "up_blocks.0"] == [(0, 3), (0, 3), (0, 9)]


def test_relative_rules_remove_the_published_shares_from_an_sdxl_proportioned_teacher() -> None:
    preset, _ = architecture("sdxl-proportioned")  # depths 0 / 1 / 11, like SDXL's 0 / 2 / 10
    teacher = Layout.of(preset.unet)
    _, ssd = resolve_layout("ssd-1b", teacher)
    _, vega = resolve_layout("vega", teacher)
    assert ssd.down == ((0,), (1,), (4,)) and ssd.up == ((4, 11), (1, 1), (0, 0)) and ssd.mid == "resnet"
    assert vega.down == ((0,), (1,), (2,)) and vega.up == ((2, 2), (1, 1), (0, 0))
    params = unet_stats(preset.unet)[0]
    assert unet_stats(ssd.unet_config(preset.unet))[0] / params == pytest.approx(0.529, abs=0.001)  # SSD-1B: 0.519
    assert unet_stats(vega.unet_config(preset.unet))[0] / params == pytest.approx(0.294, abs=0.001)  # Vega: 0.290
