"""Prompt weighting (A1111 syntax) and prompts longer than one 77-token CLIP window.

tests/conditioning/test_syntax.py tests the parser in both syntaxes.
"""

import numpy as np
import torch

from ssdxl.conditioning.prompt import encode_text
from ssdxl.sampling.request import GenerationRequest


def _reference(components, prompt):
    """Plain diffusers-style encoding: one window, truncated, no weights."""
    states = []
    for tok, enc in (
        (components.tokenizer, components.text_encoder),
        (components.tokenizer_2, components.text_encoder_2),
    ):
        ids = tok([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]
    return torch.cat(states, -1), pooled


def test_plain_prompts_encode_exactly_like_diffusers(engine):
    comps = engine.base.components
    with torch.inference_mode():
        embeds, pooled = encode_text(comps, ["a Big red circle, on a black background"])
        ref_embeds, ref_pooled = _reference(comps, "a Big red circle, on a black background")
    assert torch.equal(embeds, ref_embeds) and torch.equal(pooled, ref_pooled)


def test_long_prompts_and_break_use_more_chunks(engine):
    comps = engine.base.components
    with torch.inference_mode():
        long_embeds, _ = encode_text(comps, ["word " * 100, ""])
        split, _ = encode_text(comps, ["a red circle BREAK on black"])
    assert long_embeds.shape[:2] == (2, 154) and split.shape[1] == 154


def test_weights_and_text_past_77_tokens_change_the_image(engine):
    def image(prompt, negative=""):
        request = GenerationRequest(prompt, negative_prompt=negative, seed=1, steps=2)
        return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)

    base = image("a red circle")
    assert not np.array_equal(base, image("a (red:1.6) circle"))
    long_a = image("filler " * 80 + "red circle", negative="x " * 90)
    long_b = image("filler " * 80 + "blue square", negative="x " * 90)
    assert not np.array_equal(long_a, long_b)  # words after token 75 are not cut off
