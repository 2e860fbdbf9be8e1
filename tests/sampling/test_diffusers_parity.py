"""Same weights, seed and settings: ssdxl's image is stock diffusers' image (float32 CPU)."""

from __future__ import annotations

import numpy as np
import torch

from ssdxl.sampling.request import GenerationRequest


def diffusers_image(engine, prompt: str, *, negative: str = "", steps: int = 3, guidance: float = 5.0, seed: int = 7):
    pipe = engine.base.components.diffusers_pipeline()
    generator = torch.Generator("cpu").manual_seed(seed)
    out = pipe(
        prompt,
        negative_prompt=negative or None,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=64,
        width=64,
        generator=generator,
    )
    return np.asarray(out.images[0], dtype=np.int16)


def ssdxl_image(engine, prompt: str, *, negative: str = "", steps: int = 3, guidance: float = 5.0, seed: int = 7):
    request = GenerationRequest(
        prompt,
        negative_prompt=negative,
        width=64,
        height=64,
        steps=steps,
        guidance_scale=guidance,
        scheduler="Euler",
        seed=seed,
    )
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


def test_txt2img_matches_stock_diffusers_bit_for_bit(engine):
    for negative in ("", "blurry"):
        ours = ssdxl_image(engine, "a red circle", negative=negative)
        theirs = diffusers_image(engine, "a red circle", negative=negative)
        assert np.array_equal(ours, theirs), (negative, np.abs(ours - theirs).max(), (ours != theirs).sum())


def test_guidance_one_runs_the_conditional_branch_only_like_diffusers(engine):
    ours = ssdxl_image(engine, "a blue square", guidance=1.0)
    theirs = diffusers_image(engine, "a blue square", guidance=1.0)
    assert np.array_equal(ours, theirs)
