"""SD 1.x / 2.x single files (the original LDM layout): exact round trips, released key names, detection of the
family and of v-prediction, generation through a file, and agreement with diffusers' own LDM converters."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.errors import UserError
from ssdxl.models.components import Components, build_components
from ssdxl.models.convert import convert_model
from ssdxl.models.detect import SD2_V_PROBE, detect_prediction, detect_preset
from ssdxl.models.families import SD1, SD2, SD2_V, family_of_keys
from ssdxl.models.loading import SGM_CONFIG_KEY, load_components, preset_from_keys
from ssdxl.models.presets import Preset, get_preset
from ssdxl.models.sgm import components_from_sgm, sgm_from_components
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

Tensors = dict[str, torch.Tensor]
PRESETS = ["sd15", "sd21"]  # SD 1.x (CLIP ViT-L) and SD 2.x v (OpenCLIP ViT-H)
OPENCLIP = "cond_stage_model.model."


def state_dicts(components: Components) -> dict[str, Tensors]:
    return {name: module.state_dict() for name, module in components.modules().items()}


@cache
def tiny(name: str) -> tuple[Preset, dict[str, Tensors], Tensors]:
    preset = get_preset(name, "tiny")
    states = state_dicts(build_components(preset, seed=1))
    return preset, states, sgm_from_components(states, preset.family)


@cache
def full_meta(name: str) -> tuple[dict[str, Tensors], Tensors]:
    """Full-size state dicts on the meta device (no memory) and their single-file state dict."""
    preset = get_preset(name)
    states = state_dicts(build_components(preset, empty=True))
    return states, sgm_from_components(states, preset.family)


def assert_same(actual: dict[str, Tensors], expected: dict[str, Tensors]) -> None:
    """Equal keys and shapes per component, and equal values unless on the meta device."""
    assert actual.keys() == expected.keys()
    for name, tensors in expected.items():
        assert actual[name].keys() == tensors.keys(), name
        for key, tensor in tensors.items():
            assert actual[name][key].shape == tensor.shape, f"{name}: {key}"
            assert tensor.is_meta or torch.equal(actual[name][key], tensor), f"{name}: {key}"


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip_is_exact(name: str) -> None:
    preset, states, ldm = tiny(name)
    assert family_of_keys(ldm) is (SD1 if name == "sd15" else SD2)  # keys cannot show v-prediction
    assert detect_preset(ldm, preset.scheduler["prediction_type"]) == name
    back = components_from_sgm(ldm, preset.unet)
    assert_same(back, states)
    assert sgm_from_components(back, preset.family).keys() == ldm.keys()


def test_released_sd2_extras_are_written_and_dropped() -> None:
    """diffusers keeps 23 of OpenCLIP ViT-H's 24 blocks; files get the last back as zeros, plus a projection."""
    preset, states, ldm = tiny("sd21")
    layers = preset.text_encoder["num_hidden_layers"]
    extra = [k for k in ldm if k.startswith(f"{OPENCLIP}transformer.resblocks.{layers}.")]
    assert len(extra) == 12 and all(not ldm[k].any() for k in extra)
    assert not any(k.startswith(f"{OPENCLIP}transformer.resblocks.{layers + 1}.") for k in ldm)
    assert torch.equal(ldm[OPENCLIP + "text_projection"], torch.eye(preset.text_encoder["hidden_size"]))

    # a zero pre-norm residual block is the identity: a tower with it gives the 23-block tower's states
    deeper = dataclasses.replace(preset, text_encoder={**preset.text_encoder, "num_hidden_layers": layers + 1})
    tower, last = build_components(deeper).text_encoder, f"layers.{layers - 1}."
    zeros = {
        k.replace(last, f"layers.{layers}."): torch.zeros_like(v)
        for k, v in states["text_encoder"].items()
        if last in k
    }
    tower.load_state_dict(states["text_encoder"] | zeros)
    shallow = build_components(preset).text_encoder
    shallow.load_state_dict(states["text_encoder"])
    ids = torch.arange(12)[None]
    assert torch.equal(tower(ids).last_hidden_state, shallow(ids).last_hidden_state)


@pytest.mark.parametrize(
    "name, key",
    [
        ("sd15", "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"),
        ("sd15", "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight"),
        ("sd15", "first_stage_model.encoder.down.0.block.0.norm1.weight"),
        ("sd21", "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"),
        ("sd21", "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"),
    ],
)
def test_tiny_files_use_the_released_names(name: str, key: str) -> None:
    assert key in tiny(name)[2]


def test_sd1_files_without_the_text_model_level_load() -> None:
    preset, states, ldm = tiny("sd15")
    older = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in ldm.items()
    }
    older["cond_stage_model.transformer.embeddings.position_ids"] = torch.arange(77)[None]
    assert_same(components_from_sgm(older, preset.unet), states)


# Released SD 1.5 / 2.1 files: tensors per component, and names with their shapes. The files also hold
# ``position_ids`` (SD 1.x) and ``logit_scale`` (SD 2.x), buffers no model reads, which ssdxl skips both ways.
RELEASED_COUNTS = {
    "sd15": {"model.diffusion_model.": 686, "first_stage_model.": 248, "cond_stage_model.transformer.": 196},
    "sd21": {"model.diffusion_model.": 686, "first_stage_model.": 248, OPENCLIP: 293},
}
RELEASED_SHAPES = {
    "sd15": {
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.0.block.0.norm1.weight": (128,),
        "first_stage_model.decoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (768, 768),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
    },
    "sd21": {
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "model.diffusion_model.middle_block.1.proj_out.weight": (1280, 1280),
        OPENCLIP + "token_embedding.weight": (49408, 1024),
        OPENCLIP + "positional_embedding": (77, 1024),
        OPENCLIP + "transformer.resblocks.0.attn.in_proj_weight": (3072, 1024),
        OPENCLIP + "transformer.resblocks.23.mlp.c_fc.weight": (4096, 1024),
        OPENCLIP + "ln_final.weight": (1024,),
        OPENCLIP + "text_projection": (1024, 1024),
    },
}


@pytest.mark.parametrize("name", PRESETS)
def test_full_size_has_the_released_key_set(name: str) -> None:
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    states, ldm = full_meta(name)
    counts = {prefix: sum(k.startswith(prefix) for k in ldm) for prefix in RELEASED_COUNTS[name]}
    assert counts == RELEASED_COUNTS[name] and len(ldm) == sum(counts.values())
    assert {k: tuple(ldm[k].shape) for k in RELEASED_SHAPES[name]} == RELEASED_SHAPES[name]
    assert infer_diffusers_model_type(ldm) == ("v1" if name == "sd15" else "v2")
    assert detect_preset(ldm, get_preset(name).scheduler["prediction_type"]) == name
    assert_same(components_from_sgm(ldm, get_preset(name).unet), states)


def diffusers_reference(ldm: Tensors, preset: Preset, text_encoder: torch.nn.Module) -> dict[str, Tensors]:
    """The component state dicts diffusers' own LDM converters (``from_single_file``'s) make of ``ldm``,
    with CLIP keys in the installed transformers' naming."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    sd1 = preset.family is SD1
    text = convert_ldm_clip_checkpoint(ldm) if sd1 else convert_open_clip_checkpoint(text_encoder, ldm)
    prefixed = any(k.startswith("text_model.") for k in text_encoder.state_dict())
    return {
        "unet": convert_ldm_unet_checkpoint(ldm, preset.unet),
        "vae": convert_ldm_vae_checkpoint(ldm, preset.vae),
        "text_encoder": text if prefixed else {k.removeprefix("text_model."): v for k, v in text.items()},
    }


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("scale", ["tiny", "full"])
def test_diffusers_converters_read_our_files_back(name: str, scale: str) -> None:
    """diffusers' LDM -> diffusers converters, an independent reference, turn our file back into our components
    (tiny: every value; full size on the meta device: every name and shape). diffusers drops SD 2.x's block by
    its released name, resblocks.23, so the tiny SD 2.x tower gets the released 23 layers."""
    preset = get_preset(name, scale)
    if scale == "tiny" and preset.family is not SD1:
        preset = dataclasses.replace(preset, text_encoder={**preset.text_encoder, "num_hidden_layers": 23})
    components = build_components(preset, seed=2, empty=scale == "full")
    states = state_dicts(components)
    ldm = sgm_from_components(states, preset.family)
    assert_same(diffusers_reference(ldm, preset, components.text_encoder), states)


@pytest.mark.parametrize("name", PRESETS)
def test_diffusers_single_file_pipeline_agrees(name: str, tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    preset = get_preset(name, "tiny")
    if preset.family is not SD1:  # the released 23 layers, see above
        preset = dataclasses.replace(preset, text_encoder={**preset.text_encoder, "num_hidden_layers": 23})
    components = build_components(preset, seed=3)
    folder, single = components.save(tmp_path / "folder"), tmp_path / "model.safetensors"
    convert_model(folder, single)
    pipe = StableDiffusionPipeline.from_single_file(str(single), config=str(folder), local_files_only=True)
    assert_same(
        {key: getattr(pipe, key).state_dict() for key in ("unet", "vae", "text_encoder")}, state_dicts(components)
    )


def test_v_prediction_is_detected_as_comfyui_does() -> None:
    _, _, sd2 = tiny("sd21")
    assert detect_prediction(sd2) == "epsilon"  # a fresh LayerNorm bias does not spread
    assert detect_prediction({**sd2, "v_pred": torch.tensor([])}) == "v_prediction"
    trained = {**sd2, SD2_V_PROBE: torch.linspace(-0.5, 0.5, sd2[SD2_V_PROBE].numel())}
    assert detect_prediction(trained) == "v_prediction"
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    inpainting = {**trained, conv_in: torch.zeros(sd2[conv_in].shape[0], 9, 3, 3)}
    assert detect_prediction(inpainting) == "epsilon"  # SD 2.x inpainting models are epsilon
    _, _, sd1 = tiny("sd15")
    assert detect_prediction({**sd1, SD2_V_PROBE: trained[SD2_V_PROBE]}) == "epsilon"  # the statistic is SD 2.x's
    assert detect_prediction({**sd1, "v_pred": torch.tensor([])}) == "v_prediction"


def test_files_without_metadata_take_the_preset_and_schedule_from_their_keys() -> None:
    _, ldm = full_meta("sd21")
    assert preset_from_keys(ldm, "epsilon").name == "sd21-base"
    v = preset_from_keys(ldm, "v_prediction")
    assert (v.name, v.family, v.defaults["width"], v.defaults["height"]) == ("sd21", SD2_V, 768, 768)
    _, sd1 = full_meta("sd15")
    marked = preset_from_keys({**sd1, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])})
    assert marked.name == "sd15"
    assert marked.scheduler["prediction_type"] == "v_prediction" and marked.scheduler["rescale_betas_zero_snr"]
    assert marked.scheduler["timestep_spacing"] == "trailing"


def test_files_carry_comfyui_markers_and_ssdxl_configs(tiny_dir, tmp_path) -> None:
    single = convert_model(tiny_dir("sd21"), tmp_path / "sd21.safetensors")
    assert load_file(single)["v_pred"].numel() == 0 and "ztsnr" not in load_file(single)
    assert "v_pred" not in load_file(convert_model(tiny_dir("sd15"), tmp_path / "sd15.safetensors"))
    loaded = load_components(single)
    assert (loaded.family, loaded.name) == (SD2_V, "sd21")  # from the ssdxl.configs metadata, tiny widths and all

    stripped = tmp_path / "stripped.safetensors"  # without ssdxl's configs: the full-size preset, refused by shape
    save_file(load_file(single), str(stripped))
    with pytest.raises(UserError, match="shapes of sd21"):
        load_components(stripped)


def test_prediction_and_zero_snr_overrides(tiny_dir) -> None:
    components = load_components(tiny_dir("sd15"), prediction="v", zero_snr=True)
    config = components.scheduler_config
    assert (config["prediction_type"], config["rescale_betas_zero_snr"], config["timestep_spacing"]) == (
        "v_prediction",
        True,
        "trailing",
    )
    assert load_components(tiny_dir("sd21"), prediction="eps").family is SD2
    with pytest.raises(UserError, match="use v or eps"):
        load_components(tiny_dir("sd15"), prediction="x0")


@pytest.mark.parametrize("name", PRESETS)
def test_a_single_file_generates_the_pixels_of_its_folder(name: str, tiny_dir, tmp_path) -> None:
    folder = tiny_dir(name)
    single = convert_model(folder, tmp_path / f"{name}.safetensors")
    back = convert_model(single, tmp_path / "back")  # and the other way: every tensor as it was
    original, round_trip = state_dicts(load_components(folder)), state_dicts(load_components(back))
    assert_same(round_trip, original)
    request = GenerationRequest("a red circle", seed=5, steps=2, width=64, height=64)
    images = [
        np.asarray(Engine.load(src, device="cpu", dtype="float32").generate(request).images[0].image)
        for src in (folder, single)
    ]
    assert np.array_equal(*images)


def test_cli_init_random_convert_and_generate_with_overrides(tmp_path) -> None:
    runner = CliRunner()
    folder, single = tmp_path / "sd15", tmp_path / "sd15.safetensors"
    for args in (["init-random", "sd15", folder, "--scale", "tiny"], ["convert", folder, single]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    assert load_file(single).keys() >= {"cond_stage_model.transformer.text_model.final_layer_norm.weight"}
    with safe_open(str(single), "pt") as handle:
        assert SGM_CONFIG_KEY in handle.metadata()
    out = tmp_path / "out.png"
    args = ["generate", "a square", "-m", single, "-o", out, "--steps", "2", "-W", "64", "-H", "64", "--seed", "1"]
    result = runner.invoke(app, [str(a) for a in [*args, "--prediction", "v", "--zero-snr", "-q"]])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(app, [str(a) for a in [*args, "--prediction", "x0", "-q"]])
    assert result.exit_code == 2 and "use v or eps" in result.output
