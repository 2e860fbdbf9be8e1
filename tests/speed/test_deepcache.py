"""DeepCache: skipping the deep blocks with their recorded feature reproduces the full call exactly,
the wrapper refreshes on schedule and on batch changes, and a cached run stays close to the full one."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from ssdxl.models.presets import get_preset
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed.bench import psnr
from ssdxl.speed.deepcache import DeepCacheUNet, capturing_deep_feature, skipping_deep_blocks


def tiny_unet(preset: str):
    torch.manual_seed(0)
    config = get_preset(preset, "tiny").unet
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    n_time_ids = 5 if preset == "sdxl-refiner" else 6
    pooled = config["projection_class_embeddings_input_dim"] - n_time_ids * config["addition_time_embed_dim"]
    kwargs = {
        "encoder_hidden_states": torch.randn(2, 77, config["cross_attention_dim"]),
        "added_cond_kwargs": {"text_embeds": torch.randn(2, pooled), "time_ids": torch.randn(2, n_time_ids)},
    }
    return unet, torch.randn(2, 4, 8, 8), kwargs


@pytest.mark.parametrize("preset", ["ssd-1b", "vega", "sdxl-refiner"])  # asymmetric, symmetric, 4 levels
def test_skipping_with_the_recorded_feature_reproduces_the_full_call(preset):
    unet, sample, kwargs = tiny_unet(preset)
    with torch.no_grad():
        with capturing_deep_feature(unet) as captured:
            full = unet(sample, 500, **kwargs).sample
        with skipping_deep_blocks(unet, captured[0]):
            shallow = unet(sample, 500, **kwargs).sample
    assert torch.equal(full, shallow)
    assert all("forward" not in vars(block) for block in [*unet.down_blocks, *unet.up_blocks])


def test_wrapper_runs_full_every_interval_and_when_the_batch_changes():
    unet, sample, kwargs = tiny_unet("vega")
    cached = DeepCacheUNet(unet, interval=3)
    with torch.no_grad():
        for step in range(5):
            cached(sample, 900 - 100 * step, **kwargs)
        assert cached.full_calls == 2  # steps 0 and 3
        single = {"encoder_hidden_states": kwargs["encoder_hidden_states"][:1]}
        single["added_cond_kwargs"] = {k: v[:1] for k, v in kwargs["added_cond_kwargs"].items()}
        cached(sample[:1], 400, **single)  # guidance cut off: batch 1, the batch-2 feature is unusable
    assert cached.full_calls == 3


def test_cached_generation_is_finite_and_close_to_the_full_one(engine):
    request = GenerationRequest("a red circle", seed=3, steps=6, guidance_scale=5.0)
    full = engine.generate(request).images[0]
    cached = engine.generate(GenerationRequest("a red circle", seed=3, steps=6, guidance_scale=5.0, cache_interval=3))
    assert cached.images[0].params["cache_interval"] == 3
    assert psnr(full.image, cached.images[0].image) > 30
