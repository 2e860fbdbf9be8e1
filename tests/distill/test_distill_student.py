"""The student's weights: every kept part is an exact copy of its teacher counterpart, for each
layer-selection rule, with removed resnets too; measured importance keeps the layers that matter."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from ssdxl.distill.inputs import UNetInputs
from ssdxl.distill.layout import Layout, resolve_layout
from ssdxl.distill.selection import layer_importance
from ssdxl.distill.student import build_student, choose_layers, make_plan


@pytest.fixture(scope="module")
def teacher(teacher_preset) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config(teacher_preset.unet).eval()


def test_choose_layers() -> None:
    assert choose_layers(10, 4, "first") == (0, 1, 2, 3)
    assert choose_layers(10, 4, "spread") == (0, 3, 6, 9)
    assert choose_layers(10, 1, "spread") == (0,)
    assert choose_layers(4, 2, "importance", [0.1, 0.9, 0.0, 0.5]) == (1, 3)  # the two largest, in order
    assert choose_layers(4, 4, "importance") == (0, 1, 2, 3)  # nothing to choose, nothing to measure


@pytest.mark.parametrize("select", ["first", "spread"])
def test_every_student_weight_is_its_teacher_counterpart(teacher, select) -> None:
    teacher_layout = Layout.of(dict(teacher.config))
    _, layout = resolve_layout("ssd-1b", teacher_layout)
    plan = make_plan(teacher_layout, layout, select)
    student = build_student(teacher, plan)
    source = teacher.state_dict()
    for key, tensor in student.state_dict().items():
        assert torch.equal(tensor, source[plan.teacher_key(key)]), key
    kept = {"first": [0, 1], "spread": [0, 3]}[select]
    stack = student.down_blocks[1].attentions[0].transformer_blocks
    for i, k in enumerate(kept):
        assert torch.equal(
            stack[i].attn1.to_q.weight, teacher.down_blocks[1].attentions[0].transformer_blocks[k].attn1.to_q.weight
        )
    assert torch.equal(student.mid_block.resnets[0].conv1.weight, teacher.mid_block.resnets[0].conv1.weight)
    assert student.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight.data_ptr() != (
        teacher.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q.weight.data_ptr()
    )  # copies: training the student never touches the teacher


def test_removed_resnets_map_to_the_units_reading_the_same_skips(teacher) -> None:
    # One resnet per level: the down unit 0 stands in for units 0-1; up units read skips 0 and the previous level's.
    layout = Layout.from_dict({"down": [[0], [2]], "up": [[2, 2], [0, 0]], "mid": "resnet"})
    plan = make_plan(Layout.of(dict(teacher.config)), layout, "spread")
    units = {(u.block, u.student): (u.teacher, u.end) for u in plan.units}
    assert units[("down_blocks.1", 0)] == (0, 1)
    assert units[("up_blocks.0", 0)] == (0, 1)  # reads the deepest skip, as teacher up unit 0 did
    assert units[("up_blocks.0", 1)] == (2, 2)  # reads the downsampler's skip, as teacher up unit 2 did
    student = build_student(teacher, plan)
    for key, tensor in student.state_dict().items():
        assert torch.equal(tensor, teacher.state_dict()[plan.teacher_key(key)]), key
    x = torch.randn(1, 4, 8, 8)
    cond = {"encoder_hidden_states": torch.randn(1, 77, 64),
            "added_cond_kwargs": {"text_embeds": torch.randn(1, 32), "time_ids": torch.randn(1, 6)}}  # fmt: skip
    with torch.no_grad():
        assert student(x, 10, **cond).sample.shape == x.shape


def test_importance_keeps_the_layers_whose_removal_changes_the_output(teacher) -> None:
    unet = copy.deepcopy(teacher)
    layers = unet.down_blocks[1].attentions[0].transformer_blocks
    with torch.no_grad():  # layer 1 adds nothing (an identity); layer 3 adds a lot
        for out in (layers[1].attn1.to_out[0], layers[1].attn2.to_out[0], layers[1].ff.net[2]):
            out.weight.zero_()
            out.bias.zero_()
        layers[3].ff.net[2].weight.mul_(50)
    inputs = [
        UNetInputs(
            noisy=torch.randn(2, 4, 8, 8),
            timesteps=torch.tensor([10, 500]),
            eps=torch.zeros(2, 4, 8, 8),
            embeds=torch.randn(2, 77, 64),
            added={"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)},
        )
    ]
    scores = layer_importance(unet, ["down_blocks.1.attentions.0"], inputs)["down_blocks.1.attentions.0"]
    assert scores[1] == 0.0
    assert max(range(4), key=scores.__getitem__) == 3
    assert choose_layers(4, 2, "importance", scores)[-1] == 3 and 1 not in choose_layers(4, 3, "importance", scores)
