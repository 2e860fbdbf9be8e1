"""Feature matching and losses: every matched pair has one shape, the mapping follows the removed
parts, KD terms vanish when the student is the teacher, and the weights weigh."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from ssdxl.distill.features import Taps, feature_pairs
from ssdxl.distill.layout import Layout, resolve_layout
from ssdxl.distill.losses import Weights, distillation_loss
from ssdxl.distill.student import build_student, make_plan


@pytest.fixture(scope="module")
def teacher(teacher_preset) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(teacher_preset.unet).eval()


def unet_kwargs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor([10, 700][:batch]),
        "encoder_hidden_states": torch.randn(batch, 77, 64, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.rand(batch, 6, generator=g),
        },
    }


def run_pair(student, teacher, pairs):
    with Taps(student, [s for s, _ in pairs]) as s_taps, Taps(teacher, [t for _, t in pairs]) as t_taps:
        with torch.no_grad():
            s_pred = student(**unet_kwargs()).sample
            t_pred = teacher(**unet_kwargs()).sample
        return s_pred, t_pred, dict(s_taps.out), dict(t_taps.out)


STUDENTS = {
    "ssd-1b": "ssd-1b",
    "vega": "vega",
    "one-resnet": {"down": [[0], [3]], "up": [[3, 3], [0, 0]], "mid": "none"},
    "shallow-mid": {"down": [[0, 0], [2, 2]], "up": [[1, 1, 1], [0, 0, 0]], "mid": "attention", "mid_depth": 2},
}


@pytest.mark.parametrize("student_name", list(STUDENTS))
@pytest.mark.parametrize("level", ["layer", "block"])
def test_matched_features_have_equal_shapes(teacher, student_name, level) -> None:
    spec = STUDENTS[student_name]
    teacher_layout = Layout.of(dict(teacher.config))
    layout = resolve_layout(spec, teacher_layout)[1] if isinstance(spec, str) else Layout.from_dict(spec)
    plan = make_plan(teacher_layout, layout, "spread")
    pairs = feature_pairs(plan, level)
    _, _, s_out, t_out = run_pair(build_student(teacher, plan), teacher, pairs)
    assert pairs and len(s_out) == len({s for s, _ in pairs}) and len(t_out) == len({t for _, t in pairs})
    for s, t in pairs:
        assert s_out[s].shape == t_out[t].shape, (s, t)


def test_layer_level_mapping_matches_where_removed_parts_end(teacher) -> None:
    teacher_layout = Layout.of(dict(teacher.config))
    _, layout = resolve_layout("vega", teacher_layout)  # depth 4 -> 1: layer 0 stands in for layers 0-3
    pairs = dict(feature_pairs(make_plan(teacher_layout, layout, "first"), "layer"))
    assert pairs["down_blocks.1.attentions.0.transformer_blocks.0"] == "down_blocks.1.attentions.0.transformer_blocks.3"
    assert pairs["mid_block.resnets.0"] == "mid_block"  # the one mid resnet against the whole mid block
    one_resnet = Layout.from_dict(STUDENTS["one-resnet"])
    pairs = dict(feature_pairs(make_plan(teacher_layout, one_resnet, "first"), "layer"))
    assert pairs["down_blocks.0.resnets.0"] == "down_blocks.0.resnets.1"  # absorbed unit 1: matched at its end
    assert pairs["down_blocks.1.attentions.0"] == "down_blocks.1.attentions.1"
    assert pairs["up_blocks.0.resnets.1"] == "up_blocks.0.resnets.2"
    assert "mid_block" not in pairs.values()  # no mid block, nothing to match


def test_kd_terms_are_zero_when_the_student_is_the_teacher(teacher) -> None:
    layout = Layout.of(dict(teacher.config))
    plan = make_plan(layout, layout)
    student = build_student(teacher, plan)
    pairs = feature_pairs(plan, "layer")
    s_pred, t_pred, s_out, t_out = run_pair(student, teacher, pairs)
    eps = torch.randn_like(s_pred)
    losses = distillation_loss(s_pred, eps, t_pred, s_out, t_out, pairs, Weights())
    assert losses["out"].item() == 0.0 and losses["feat"].item() == 0.0
    assert losses["total"].item() == pytest.approx(losses["task"].item()) and losses["task"].item() > 0


def test_loss_weights(teacher) -> None:
    teacher_layout = Layout.of(dict(teacher.config))
    plan = make_plan(teacher_layout, resolve_layout("vega", teacher_layout)[1])
    pairs = feature_pairs(plan, "layer")
    s_pred, t_pred, s_out, t_out = run_pair(build_student(teacher, plan), teacher, pairs)
    eps = torch.randn_like(s_pred)
    terms = distillation_loss(s_pred, eps, t_pred, s_out, t_out, pairs, Weights(out=0.0, feat=0.0))
    assert terms["out"] > 0 and terms["feat"] > 0 and terms["total"] == terms["task"]
    feat = sum(torch.mean((s_out[s].float() - t_out[t].float()) ** 2) for s, t in pairs)
    assert terms["feat"].item() == pytest.approx(feat.item(), rel=1e-5)  # a sum over pairs
    weighted = distillation_loss(s_pred, eps, t_pred, s_out, t_out, pairs, Weights(out=2.0, feat=0.25))
    expected = terms["task"] + 2.0 * terms["out"] + 0.25 * terms["feat"]
    assert weighted["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    task_only = distillation_loss(s_pred, eps, None, s_out, t_out, [], Weights())
    assert task_only["total"] == task_only["task"] and task_only["out"] == 0 and task_only["feat"] == 0
