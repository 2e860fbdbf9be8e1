"""SD 1.x / 2.x beside SDXL: same weights, seed and settings give stock diffusers' StableDiffusionPipeline image
(float32 CPU), for epsilon and v-prediction models, with and without a negative prompt, with clip skip and
img2img."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from ssdxl.errors import UserError
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

SETTINGS = {"steps": 3, "guidance_scale": 5.0, "seed": 7}


@pytest.fixture(scope="module")
def engines(tiny_dir):
    made = {}

    def get(preset: str) -> Engine:
        if preset not in made:
            made[preset] = Engine.load(tiny_dir(preset), device="cpu", dtype="float32", backend="torch", optimize=False)
        return made[preset]

    return get


def ours(engine: Engine, prompt: str, **fields) -> np.ndarray:
    request = GenerationRequest(prompt, width=64, height=64, scheduler="Euler", **{**SETTINGS, **fields})
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


def theirs(pipe, prompt: str, negative: str = "", **kwargs) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(SETTINGS["seed"])
    out = pipe(
        prompt=prompt if "prompt_embeds" not in kwargs else None,
        negative_prompt=(negative or None) if "prompt_embeds" not in kwargs else None,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["guidance_scale"],
        generator=generator,
        **kwargs,
    )
    return np.asarray(out.images[0], dtype=np.int16)


@pytest.mark.parametrize("preset", ["sd15", "sd20-base", "sd21"])
def test_txt2img_matches_stable_diffusion_pipeline(engines, preset):
    engine = engines(preset)
    assert engine.base.components.family.name == {"sd15": "sd1", "sd20-base": "sd2", "sd21": "sd2-v"}[preset]
    pipe = engine.base.components.diffusers_pipeline()
    for negative in ("", "blurry"):
        a = ours(engine, "a red circle", negative_prompt=negative)
        b = theirs(pipe, "a red circle", negative, height=64, width=64)
        assert np.abs(a - b).max() <= 1, (preset, negative)


def test_clip_skip_reads_an_earlier_layer_normed_as_diffusers_does(engines):
    """diffusers' own clip_skip needs ``text_encoder.text_model``, which transformers 5 removed, so the reference
    embeddings follow its documented recipe: hidden_states[-(clip_skip + 1)] through the final layer norm."""
    engine = engines("sd15")
    pipe = engine.base.components.diffusers_pipeline()
    encoder = copy.deepcopy(pipe.text_encoder)

    def embeds(text: str) -> torch.Tensor:
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        states = encoder(ids, output_hidden_states=True).hidden_states[-2]
        return encoder.final_layer_norm(states)

    with torch.no_grad():
        reference = theirs(pipe, "", prompt_embeds=embeds("a red circle"), negative_prompt_embeds=embeds(""))
    skipped = ours(engine, "a red circle", clip_skip=2)
    assert np.abs(skipped - reference).max() <= 1
    assert not np.array_equal(skipped, ours(engine, "a red circle"))
    with pytest.raises(UserError, match="clip_skip: must be between 1 and 12"):
        engine.resolve(GenerationRequest("a cat", clip_skip=13))
    with pytest.raises(UserError, match="clip_skip: must be at most 3 for this model"):  # the tiny tower has 2 layers
        engine.resolve(GenerationRequest("a cat", clip_skip=4))


def test_img2img_matches_the_img2img_pipeline(engines):
    """From the same init latents (ssdxl encodes with the posterior's mode, diffusers samples it with the
    generator): the same strength slicing, noising and denoising."""
    from diffusers import StableDiffusionImg2ImgPipeline

    engine = engines("sd21")
    pipe = StableDiffusionImg2ImgPipeline(**engine.base.components.diffusers_pipeline().components)
    pipe.set_progress_bar_config(disable=True)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    a = ours(engine, "a blue square", init_image=init, strength=0.6, steps=5)
    latents = engine._encode_pixels(init, 64, 64)
    generator = torch.Generator("cpu").manual_seed(SETTINGS["seed"])
    out = pipe("a blue square", image=latents, strength=0.6, num_inference_steps=5, guidance_scale=5.0,
               generator=generator)  # fmt: skip
    assert np.abs(a - np.asarray(out.images[0], dtype=np.int16)).max() <= 1


def test_sd_models_have_no_size_conditioning_and_batch_prompts_of_any_length(engines):
    engine = engines("sd15")
    request = engine.resolve(GenerationRequest("red " * 90, negative_prompt="", width=64, height=64, steps=2))
    assert engine.batch_key(request)[-1][0] == 2  # two 75-token chunks
    result = engine.generate(request)
    assert result.images[0].image.size == (64, 64)
