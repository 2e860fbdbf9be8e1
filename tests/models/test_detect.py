"""Preset detection from single-file (SGM) key names, at full size (meta tensors) and tiny scale."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from ssdxl.errors import UserError
from ssdxl.models.components import build_components
from ssdxl.models.detect import describe_structure, detect_preset
from ssdxl.models.presets import get_preset
from ssdxl.models.sgm import sgm_from_components

PRESETS = ["sdxl-base", "ssd-1b", "vega", "sdxl-refiner"]


@cache
def sgm_keys(name: str, scale: str) -> list[str]:
    """The SGM key names of a preset, from models built on the meta device (no memory, no init)."""
    models = build_components(get_preset(name, scale), empty=True).modules()
    return list(sgm_from_components({key: model.state_dict() for key, model in models.items()}))


@pytest.mark.parametrize("scale", ["full", "tiny"])
@pytest.mark.parametrize("name", PRESETS)
def test_detects_each_preset(name: str, scale: str) -> None:
    assert detect_preset(sgm_keys(name, scale)) == name


@pytest.mark.parametrize("name", PRESETS)
def test_tiny_copies_have_the_full_structure(name: str) -> None:
    assert describe_structure(sgm_keys(name, "tiny")) == describe_structure(sgm_keys(name, "full"))


EXPECTED = {
    "sdxl-base": (
        [[0, 0], [2, 2], [10, 10]],
        ["resnet", 10, "resnet"],
        [[10, 10, 10], [2, 2, 2], [0, 0, 0]],
        70,
    ),
    "ssd-1b": ([[0, 0], [2, 2], [4, 4]], ["resnet"], [[4, 4, 10], [2, 1, 1], [0, 0, 0]], 34),
    "vega": ([[0, 0], [1, 1], [2, 2]], ["resnet"], [[2, 2, 2], [1, 1, 1], [0, 0, 0]], 15),
    "sdxl-refiner": (
        [[0, 0], [4, 4], [4, 4], [0, 0]],
        ["resnet", 4, "resnet"],
        [[0, 0, 0], [4, 4, 4], [4, 4, 4], [0, 0, 0]],
        44,
    ),
}


@pytest.mark.parametrize("name", PRESETS)
def test_describe_structure(name: str) -> None:
    structure = describe_structure(sgm_keys(name, "full"))
    down, mid, up, blocks = EXPECTED[name]
    assert (structure["down"], structure["mid"], structure["up"]) == (down, mid, up)
    assert structure["transformer_blocks"] == blocks  # the counts in sdxl-family.md
    assert structure["mid_attention"] == (len(mid) > 1)
    assert structure["embedders"] == (["openclip"] if name == "sdxl-refiner" else ["clip-l", "openclip"])


def sd15_keys() -> list[str]:
    """Key names of a Stable Diffusion 1.5 single file: 4 levels, depth 1, CLIP under cond_stage_model."""
    unet = "model.diffusion_model."
    keys = [unet + "input_blocks.0.0.weight", unet + "out.2.weight"]
    n = 1
    for level in range(4):
        for _ in range(2):
            keys.append(f"{unet}input_blocks.{n}.0.in_layers.0.weight")
            if level < 3:
                keys.append(f"{unet}input_blocks.{n}.1.transformer_blocks.0.attn1.to_q.weight")
            n += 1
        if level < 3:
            keys.append(f"{unet}input_blocks.{n}.0.op.weight")
            n += 1
    keys += [unet + f"middle_block.{i}.in_layers.0.weight" for i in (0, 2)]
    keys.append(unet + "middle_block.1.transformer_blocks.0.attn1.to_q.weight")
    for n in range(12):
        keys.append(f"{unet}output_blocks.{n}.0.in_layers.0.weight")
        if n >= 3:
            keys.append(f"{unet}output_blocks.{n}.1.transformer_blocks.0.attn1.to_q.weight")
        if n in (2, 5, 8):
            keys.append(f"{unet}output_blocks.{n}.{1 if n == 2 else 2}.conv.weight")
    keys += [
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
        "first_stage_model.quant_conv.weight",
    ]
    return keys


def test_sd1_and_sd2_share_a_structure_and_differ_in_their_text_tower() -> None:
    structure = describe_structure(sd15_keys())
    assert structure["down"] == [[1, 1], [1, 1], [1, 1], [0, 0]]
    assert structure["up"] == [[0, 0, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert structure["embedders"] == ["clip-l"]
    assert detect_preset(sd15_keys()) == "sd15"
    clip_l_norm = "cond_stage_model.transformer.text_model.final_layer_norm"
    sd2 = [k.replace(clip_l_norm, "cond_stage_model.model.ln_final") for k in sd15_keys()]
    assert describe_structure(sd2)["embedders"] == ["openclip"]
    assert detect_preset(sd2) == "sd21-base"  # 2.0 and 2.1 share the structure: the later release
    assert detect_preset(sd2, "v_prediction") == "sd21"
    assert detect_preset(sd15_keys(), "v_prediction") == "sd15"  # SD 1.x v models are sd15 with another scheduler
    with pytest.raises(UserError, match="without a known text encoder"):
        detect_preset([k for k in sd15_keys() if not k.startswith("cond_stage_model.")])


def test_diffusers_state_dict_is_rejected() -> None:
    unet = build_components(get_preset("vega", "tiny"), empty=True).unet
    with pytest.raises(UserError, match="diffusers-format state dict"):
        detect_preset(unet.state_dict().keys())


def test_other_files_are_rejected() -> None:
    with pytest.raises(UserError, match="no tensors"):
        detect_preset([])
    with pytest.raises(UserError, match="not a Stable Diffusion single-file checkpoint"):
        detect_preset(["lora_unet_down_blocks_0.alpha"])


def test_unknown_sdxl_like_layout_is_rejected() -> None:
    keys = [k for k in sgm_keys("sdxl-base", "tiny") if ".transformer_blocks.9." not in k]
    with pytest.raises(UserError, match="SDXL base checkpoint with an unsupported UNet layout"):
        detect_preset(keys)


def test_detection_needs_keys_only() -> None:
    keys = sgm_keys("vega", "tiny")
    assert detect_preset(iter(keys)) == "vega"
    assert detect_preset({k: torch.empty(0) for k in keys}) == "vega"
