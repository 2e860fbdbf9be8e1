import pytest

from ssdxl.errors import UserError
from ssdxl.models.presets import get_preset, preset_names, unet_stats

PUBLISHED = {
    "sdxl-base": (2_567_463_684, 70),
    "sdxl-refiner": (2_259_526_660, 44),
    "ssd-1b": (1_331_334_404, 34),
    "vega": (745_225_604, 15),
    "sd15": (859_520_964, 16),
    "sd20-base": (865_910_724, 16),
    "sd20": (865_910_724, 16),
    "sd21-base": (865_910_724, 16),
    "sd21": (865_910_724, 16),
}
FAMILIES = {
    "sdxl-base": "sdxl",
    "sdxl-refiner": "sdxl-refiner",
    "ssd-1b": "sdxl",
    "vega": "sdxl",
    "sd15": "sd1",
    "sd20-base": "sd2",
    "sd20": "sd2-v",
    "sd21-base": "sd2",
    "sd21": "sd2-v",
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_unet_matches_published_counts(name):
    assert unet_stats(get_preset(name).unet) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_tiny_copy_keeps_structure(name):
    full, tiny = get_preset(name), get_preset(name, "tiny")
    assert unet_stats(tiny.unet)[1] == PUBLISHED[name][1]  # same transformer blocks
    assert unet_stats(tiny.unet)[0] < 30_000_000
    for key in ("down_block_types", "up_block_types", "mid_block_type", "layers_per_block"):
        assert tiny.unet.get(key) == full.unet.get(key)
    assert tiny.is_refiner == full.is_refiner
    assert tiny.family == full.family


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_follows_from_the_configs(name):
    family = get_preset(name).family
    assert family.name == FAMILIES[name]
    assert get_preset(name).defaults["width"] == family.default_size


def test_presets_listed_and_unknown_rejected():
    assert set(preset_names()) == set(PUBLISHED)
    with pytest.raises(UserError, match="unknown preset"):
        get_preset("sdxl-turbo")
    with pytest.raises(UserError, match="unknown scale"):
        get_preset("vega", "huge")


def test_saved_folder_loads_in_stock_diffusers(tiny_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_dir("vega"))
    image = pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_saving_in_half_precision_leaves_the_weights_in_memory_untouched(tmp_path):
    import torch

    from ssdxl.models.components import build_components

    components = build_components(get_preset("vega", "tiny"), seed=1)
    before = components.unet.conv_in.weight.detach().clone()
    components.save(tmp_path / "half", dtype=torch.float16)
    assert torch.equal(components.unet.conv_in.weight, before)
    assert components.unet.conv_in.weight.dtype == torch.float32
