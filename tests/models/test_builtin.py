"""The shipped default model: loads offline with no --model, draws non-degenerate pictures, obeys prompts."""

import numpy as np

from ssdxl.data.shapes import ShapesWorld
from ssdxl.evaluation.adherence import evaluate
from ssdxl.models import builtin
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest


def test_builtin_model_is_installed_and_default():
    assert builtin.DEFAULT_MODEL in builtin.names()
    engine = Engine.load(device="cpu")
    assert engine.base.source == builtin.DEFAULT_MODEL
    image = np.asarray(
        engine.generate(GenerationRequest("a large red circle on a black background", seed=0)).images[0].image
    )
    assert image.shape == (64, 64, 3) and image.std() > 20  # not a flat or empty picture


def test_builtin_model_obeys_background_and_colour_on_training_prompts():
    engine = Engine.load(device="cpu")
    scenes = [ShapesWorld(seed=5, two_object_fraction=0.0).scene(i) for i in range(6)]

    def generate(prompt, width, height, seed):
        return engine.generate(GenerationRequest(prompt, width=width, height=height, seed=seed)).images[0].image

    report = evaluate(generate, scenes)
    assert report.accuracy["background"] >= 0.8
    assert report.accuracy["colour"] >= 0.8
