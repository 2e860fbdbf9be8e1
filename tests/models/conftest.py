"""Shared by the built-in model tests: a quick check that a model obeys prompts."""

import pytest

from ssdxl.data.shapes import ShapesWorld
from ssdxl.evaluation.adherence import evaluate
from ssdxl.sampling.request import GenerationRequest


@pytest.fixture(scope="session")
def judge_six():
    """``judge_six(engine, scale=1, **request_fields)``: the adherence report of six one-object shapes-world prompts,
    each drawn at ``scale`` times its scene's size with the given request fields (LoRAs, a scheduler)."""
    scenes = [ShapesWorld(seed=5, two_object_fraction=0.0).scene(i) for i in range(6)]

    def judge(engine, scale: int = 1, **fields):
        def generate(prompt, width, height, seed):
            request = GenerationRequest(prompt, width=width, height=height, seed=seed, **fields)
            return engine.generate(request).images[0].image

        return evaluate(generate, scenes, scale=scale)

    return judge
