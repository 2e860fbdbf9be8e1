"""A single file's ``ssdxl.configs`` metadata is checked before any module is built: absurd sizes are a one-line
UserError naming the key and the file, never an attempt to allocate them."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from ssdxl.errors import UserError
from ssdxl.models import components as components_module
from ssdxl.models.loading import load_components
from ssdxl.models.presets import get_preset


def crafted(tmp_path, change, name="crafted.safetensors"):
    """A tiny file whose metadata is the tiny Vega's configs with ``change`` applied to them."""
    configs = dataclasses.asdict(get_preset("vega", "tiny"))
    change(configs)
    path = tmp_path / name
    save_file({"x": torch.zeros(1)}, str(path), metadata={"ssdxl.configs": json.dumps(configs)})
    return path


@pytest.fixture
def no_building(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built from out-of-bounds configs")

    monkeypatch.setattr(components_module, "build_components", refuse)
    import ssdxl.models.loading as loading

    monkeypatch.setattr(loading, "build_components", refuse)


@pytest.mark.parametrize(
    ("component", "key", "value"),
    [
        ("text_encoder", "max_position_embeddings", 1e8),
        ("text_encoder", "max_position_embeddings", 100_000_000),
        ("text_encoder_2", "vocab_size", 10**9),
        ("text_encoder_2", "hidden_size", 1_000_000),
        ("text_encoder_2", "num_hidden_layers", 10_000),
        ("text_encoder", "num_attention_heads", 4096),
        ("text_encoder", "intermediate_size", 10**7),
        ("unet", "block_out_channels", [32, 64, 10**6]),
        ("unet", "transformer_layers_per_block", [1, 1, 5000]),
        ("unet", "layers_per_block", 1000),
        ("unet", "cross_attention_dim", 10**6),
        ("unet", "in_channels", 100_000),
        ("unet", "down_block_types", ["DownBlock2D"] * 1000),
        ("vae", "block_out_channels", [32, 32, 64, 10**6]),
        ("vae", "latent_channels", 0),
        ("vae", "layers_per_block", float("inf")),
        ("vae", "layers_per_block", 2.5),
        ("vae", "layers_per_block", "many"),
        ("scheduler", "num_train_timesteps", 10**9),
        ("unet", "num_class_embeds", 10**8),
    ],
)
def test_absurd_config_values_are_refused_before_building(tmp_path, no_building, component, key, value):
    path = crafted(tmp_path, lambda c: c[component].__setitem__(key, value))
    with pytest.raises(UserError) as error:
        load_components(path)
    message = str(error.value)
    assert "\n" not in message and path.name in message and f"{component}.{key}" in message, message
    assert str(tmp_path) not in message  # the file's name, not where the server keeps it


def test_absurd_generation_defaults_are_refused(tmp_path, no_building):
    path = crafted(tmp_path, lambda c: c["defaults"].__setitem__("width", 10**6))
    with pytest.raises(UserError, match=r"crafted.safetensors: .*defaults.width"):
        load_components(path)


def test_metadata_that_is_not_configs_is_a_user_error(tmp_path, no_building):
    path = tmp_path / "odd.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"ssdxl.configs": json.dumps([1, 2])})
    with pytest.raises(UserError, match="odd.safetensors: unreadable ssdxl.configs"):
        load_components(path)


def test_in_bounds_but_unbuildable_configs_are_a_user_error(tmp_path):
    # 33 channels: group norm's 32 groups do not divide them; within bounds, so the build itself refuses
    path = crafted(tmp_path, lambda c: c["unet"].__setitem__("block_out_channels", [33, 64, 128]))
    with pytest.raises(UserError, match="crafted.safetensors"):
        load_components(path)


def test_real_sizes_are_within_bounds():
    from ssdxl.models.loading import check_config_bounds
    from ssdxl.models.presets import preset_names

    for name in preset_names():
        check_config_bounds(get_preset(name), name)  # SDXL base/refiner, SSD-1B, Vega at full size
