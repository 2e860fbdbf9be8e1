"""The shipped default model: loads offline with no --model, draws non-degenerate pictures, obeys prompts."""

import numpy as np
import pytest

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


def test_builtin_model_obeys_background_and_colour_on_training_prompts(judge_six):
    report = judge_six(Engine.load(device="cpu"))
    assert report.accuracy["background"] >= 0.8
    assert report.accuracy["colour"] >= 0.8


def test_the_distilled_student_ships_beside_its_teacher(judge_six):
    """`shapes-ssd1b`: the SSD-1B-like student of the first `shapes` (scripts/distill_proof.py --ship).
    `shapes` has since been fine-tuned, so the student carries the first version's text encoders and
    VAE (frozen during its distillation) and must not borrow the current ones."""
    assert "shapes-ssd1b" in builtin.names()
    folder = builtin.resolve("shapes-ssd1b")
    assert {p.name for p in folder.iterdir() if p.is_dir()} >= {"unet", "text_encoder", "text_encoder_2", "vae"}
    student, teacher = Engine.load("shapes-ssd1b", device="cpu"), Engine.load(device="cpu")
    s, t = student.base.components, teacher.base.components
    params = {name: sum(p.numel() for p in c.unet.parameters()) for name, c in (("s", s), ("t", t))}
    # the SSD-1B rule on a teacher with one-layer stacks: mid and deepest down attention removed
    assert params["s"] / params["t"] == pytest.approx(0.847, abs=0.001)
    assert s.unet.config.mid_block_type == "UNetMidBlock2D"  # mid attention removed, as in SSD-1B

    report = judge_six(student)
    assert report.accuracy["background"] >= 0.8 and report.accuracy["colour"] >= 0.8


def test_unipc_segmind_clients_default_keeps_the_builtin_models_adherence():
    """UniPC's second-order update took the built-in model's colours from 100% to 78% (its scheduler
    config now asks for first order); the held-out suite, as Segmind clients would run it."""
    from ssdxl.evaluation.adherence import adherence_suite

    engine = Engine.load(device="cpu")

    def generate(prompt, width, height, seed):
        request = GenerationRequest(prompt, width=width, height=height, seed=seed, scheduler="UniPC")
        return engine.generate(request).images[0].image

    report = evaluate(generate, adherence_suite(10, 10, 0))
    assert report.accuracy["colour"] >= 0.95 and report.accuracy["all"] >= 0.9, report.accuracy


def test_the_few_step_loras_ship_and_draw_in_four_steps(judge_six):
    """`shapes-rt` / `shapes-ssd1b-rt` (scripts/finetune_proof.py --ship): found by name with no --lora-dir,
    recognised as LCM-LoRAs (LCM sampler, 4 steps, no guidance) and obeying prompts at 4 steps."""
    from ssdxl.adapters.library import AdapterLibrary

    library = AdapterLibrary()
    assert {"shapes-rt", "shapes-ssd1b-rt"} <= set(library.lora_names())
    assert library.lora("shapes-rt").few_step == "LCM"
    engine = Engine.load(device="cpu")
    resolved = engine.resolve(GenerationRequest("a large red circle on a black background <lora:shapes-rt:1>"))
    assert (resolved.scheduler, resolved.steps, resolved.guidance_scale) == ("LCM", 4, 1.0)
    report = judge_six(engine, loras=[("shapes-rt", 1.0)])
    assert report.accuracy["background"] >= 0.8 and report.accuracy["colour"] >= 0.8 and report.accuracy["shape"] >= 0.8
