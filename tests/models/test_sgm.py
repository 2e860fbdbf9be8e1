"""Single-file (SGM layout) conversion: lossless round trips, and agreement with diffusers' own loader."""

from __future__ import annotations

from functools import cache

import pytest
import safetensors.torch
import torch

from ssdxl.errors import UserError
from ssdxl.models.components import Components, build_components
from ssdxl.models.detect import detect_preset
from ssdxl.models.presets import Preset, get_preset
from ssdxl.models.sgm import components_from_sgm, sgm_from_components

PRESETS = ["sdxl-base", "ssd-1b", "vega", "sdxl-refiner"]


@cache
def tiny(name: str) -> tuple[Preset, Components, dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    preset = get_preset(name, "tiny")
    components = build_components(preset, seed=1)
    state_dicts = {key: module.state_dict() for key, module in components.modules().items()}
    return preset, components, state_dicts, sgm_from_components(state_dicts)


def full_meta(name: str) -> tuple[dict[str, torch.nn.Module], dict[str, torch.Tensor]]:
    """Full-size models on the meta device (no memory) and their SGM state dict of meta tensors."""
    models = build_components(get_preset(name), empty=True).modules()
    return models, sgm_from_components({key: model.state_dict() for key, model in models.items()})


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip_is_lossless_and_key_complete(name: str) -> None:
    preset, components, state_dicts, sgm = tiny(name)
    assert detect_preset(sgm) == name
    back = components_from_sgm(sgm, preset.unet)
    assert set(back) == set(state_dicts)
    for key, original in state_dicts.items():
        assert set(back[key]) == set(original), key
        for param, tensor in original.items():
            assert back[key][param].dtype == tensor.dtype and torch.equal(back[key][param], tensor), param
        getattr(components, key).load_state_dict(back[key], strict=True)
    safetensors.torch.save(back["text_encoder_2"])  # split q/k/v share no storage
    assert sgm_from_components(back).keys() == sgm.keys()


@pytest.mark.parametrize("name", PRESETS)
def test_layout_details(name: str) -> None:
    preset, components, state_dicts, sgm = tiny(name)
    bigg = "conditioner.embedders.0.model." if preset.is_refiner else "conditioner.embedders.1.model."
    prefixes = {"model.diffusion_model.", "first_stage_model.", bigg}
    if not preset.is_refiner:
        prefixes.add("conditioner.embedders.0.transformer.text_model.")
    assert all(any(k.startswith(p) for p in prefixes) for k in sgm)

    te2 = components.text_encoder_2
    assert torch.equal(sgm[bigg + "text_projection"], te2.text_projection.weight.T)
    layer = te2.text_model.encoder.layers[1].self_attn
    fused = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    assert torch.equal(sgm[bigg + "transformer.resblocks.1.attn.in_proj_weight"], fused)
    width = te2.config.hidden_size
    assert sgm[bigg + "positional_embedding"].shape == (77, width)

    q = sgm["first_stage_model.decoder.mid.attn_1.q.weight"]
    assert q.shape == (*components.vae.decoder.mid_block.attentions[0].to_q.weight.shape, 1, 1)

    mid = {k.split(".")[3] for k in sgm if k.startswith("model.diffusion_model.middle_block.")}
    assert mid == ({"0"} if name in ("ssd-1b", "vega") else {"0", "1", "2"})


# diffusers' from_single_file reads the model config from the given folder (``config=``) and never
# touches the network with local_files_only=True; its own SGM -> diffusers converter must then
# reproduce every original tensor, which pins our layout to the one the ecosystem uses.
@pytest.mark.parametrize("name", PRESETS)
def test_diffusers_single_file_loader_agrees(name: str, tmp_path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    preset, components, state_dicts, sgm = tiny(name)
    checkpoint = tmp_path / "model.safetensors"
    safetensors.torch.save_file(sgm, checkpoint)
    components.save(tmp_path / "diffusers")
    pipeline_class = StableDiffusionXLImg2ImgPipeline if preset.is_refiner else StableDiffusionXLPipeline
    pipe = pipeline_class.from_single_file(str(checkpoint), config=str(tmp_path / "diffusers"), local_files_only=True)
    for key, original in state_dicts.items():
        loaded = getattr(pipe, key).state_dict()
        assert set(loaded) == set(original), key
        for param, tensor in original.items():
            assert torch.equal(loaded[param], tensor), f"{key}: {param}"


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_keys_round_trip(name: str) -> None:
    models, sgm = full_meta(name)
    back = components_from_sgm(sgm, get_preset(name).unet)
    for key, model in models.items():
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in back[key].items()} == expected, key
    assert detect_preset(sgm) == name


# Key names and shapes as they appear in the released single-file checkpoints.
KNOWN_KEYS = {
    "sdxl-base": {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.middle_block.1.transformer_blocks.9.attn1.to_q.weight": (1280, 1280),
        "model.diffusion_model.middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc1.weight": (3072, 768),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    },
    "ssd-1b": {
        "model.diffusion_model.middle_block.0.in_layers.2.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.3.attn1.to_q.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.2.1.transformer_blocks.9.attn1.to_q.weight": (1280, 1280),
    },
    "sdxl-refiner": {
        "model.diffusion_model.label_emb.0.0.weight": (1536, 2560),
        "model.diffusion_model.input_blocks.11.0.in_layers.2.weight": (1536, 1536, 3, 3),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1536, 1536, 3, 3),
        "model.diffusion_model.output_blocks.5.1.transformer_blocks.3.attn2.to_k.weight": (1536, 1280),
        "conditioner.embedders.0.model.ln_final.weight": (1280,),
    },
}
ABSENT_KEYS = {
    "sdxl-base": ["conditioner.embedders.0.model.ln_final.weight"],
    "ssd-1b": [
        "model.diffusion_model.middle_block.1.norm.weight",
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.4.attn1.to_q.weight",
    ],
    "sdxl-refiner": ["model.diffusion_model.input_blocks.12.0.in_layers.2.weight"],
}


@pytest.mark.parametrize("name", list(KNOWN_KEYS))
def test_full_size_matches_released_checkpoint_names(name: str) -> None:
    _, sgm = full_meta(name)
    assert {k: tuple(sgm[k].shape) for k in KNOWN_KEYS[name] if k in sgm} == KNOWN_KEYS[name]
    assert not [k for k in ABSENT_KEYS[name] if k in sgm]


def test_extras_are_ignored_and_strangers_rejected() -> None:
    preset, components, _, sgm = tiny("sdxl-base")
    extras = {
        "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
        "conditioner.embedders.1.model.logit_scale": torch.tensor(4.6),
        "model_ema.decay": torch.tensor(0.9999),
    }
    back = components_from_sgm({**sgm, **extras}, preset.unet)
    components.text_encoder.load_state_dict(back["text_encoder"], strict=True)
    components.text_encoder_2.load_state_dict(back["text_encoder_2"], strict=True)

    with pytest.raises(UserError, match="not part of a Stable Diffusion single-file model"):
        components_from_sgm({**sgm, "model.diffusion_model.lora_up.weight": torch.zeros(1)}, preset.unet)


def test_wrong_config_is_a_user_error() -> None:
    _, _, _, sgm = tiny("sdxl-base")
    with pytest.raises(UserError, match="looks like sdxl-base"):
        components_from_sgm(sgm, get_preset("ssd-1b", "tiny").unet)
