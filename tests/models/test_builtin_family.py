"""The built-in family in SDXL's proportions (docs/builtin-model.md, docs/distillation.md): ``shapes-xl``, grown from
``shapes`` to SDXL's depths at 128x128, its SSD-1B- and Vega-like students and the Vega-like one's LCM-LoRA."""

import dataclasses

import numpy as np
import pytest
import torch

from ssdxl.evaluation.adherence import suite_scale
from ssdxl.models import builtin
from ssdxl.models.vae import latent_space
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

FAMILY = ("shapes-xl", "shapes-xl-ssd1b", "shapes-xl-vega")


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    return {name: Engine.load(name, device="cpu") for name in ("shapes", *FAMILY)}


def _params(engine: Engine) -> int:
    return sum(p.numel() for p in engine.base.components.unet.parameters())


def test_the_family_ships_only_what_it_adds(engines: dict[str, Engine]) -> None:
    """The teacher keeps shapes' text encoders (borrowed, not copied) and adds a UNet and an 8x VAE; the students
    add only their UNets. SDXL's depths, and the published shares the SSD-1B and Vega rules cut."""
    own = {"shapes-xl": {"unet", "vae", "scheduler"}, "shapes-xl-ssd1b": {"unet", "scheduler"},
           "shapes-xl-vega": {"unet", "scheduler"}}  # fmt: skip
    for name, parts in own.items():
        assert {p.name for p in builtin.resolve(name).iterdir() if p.is_dir()} == parts, name
    shapes, teacher = engines["shapes"].base.components, engines["shapes-xl"].base.components
    for slot in ("text_encoder", "text_encoder_2"):
        mine, theirs = getattr(teacher, slot).state_dict(), getattr(shapes, slot).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), slot
    assert teacher.unet.config.transformer_layers_per_block == [1, 2, 10]
    assert teacher.vae_scale == 8 and shapes.vae_scale == 4
    # the same latents at twice the size: one scale, one latent space but for the downscale
    assert teacher.vae.config.scaling_factor == shapes.vae.config.scaling_factor
    assert latent_space(teacher.vae).replace("÷8", "÷4") == latent_space(shapes.vae)
    for student in ("shapes-xl-ssd1b", "shapes-xl-vega"):
        assert engines[student].base.components.vae is not None
        assert engines[student].base.components.unet.config.mid_block_type == "UNetMidBlock2D"
    ratio = {s: _params(engines[s]) / _params(engines["shapes-xl"]) for s in ("shapes-xl-ssd1b", "shapes-xl-vega")}
    assert ratio["shapes-xl-ssd1b"] == pytest.approx(0.599, abs=0.001)
    assert ratio["shapes-xl-vega"] == pytest.approx(0.366, abs=0.001)


@pytest.mark.parametrize("name", FAMILY)
def test_every_member_draws_128_pixel_images_that_obey_prompts(engines: dict[str, Engine], name: str, judge_six):
    engine = engines[name]
    image = np.asarray(engine.generate(GenerationRequest("a large red circle on a black background")).images[0].image)
    assert image.shape == (128, 128, 3) and image.std() > 20
    report = judge_six(engine, scale=suite_scale({"width": 128}))
    assert report.accuracy["background"] >= 0.8 and report.accuracy["colour"] >= 0.8, report.accuracy


def test_the_vegart_like_lora_draws_in_four_steps(engines: dict[str, Engine], judge_six) -> None:
    """``shapes-xl-vega-rt`` (scripts/distill_proof.py --ship): an LCM-LoRA found by name, 4 steps, no guidance."""
    from ssdxl.adapters.library import AdapterLibrary

    assert AdapterLibrary().lora("shapes-xl-vega-rt").few_step == "LCM"
    engine = engines["shapes-xl-vega"]
    resolved = engine.resolve(GenerationRequest("a red circle <lora:shapes-xl-vega-rt:1>"))
    assert (resolved.scheduler, resolved.steps, resolved.guidance_scale) == ("LCM", 4, 1.0)
    report = judge_six(engine, scale=suite_scale({"width": 128}), loras=[("shapes-xl-vega-rt", 1.0)])
    assert report.accuracy["background"] >= 0.8 and report.accuracy["colour"] >= 0.8, report.accuracy


def test_shapes_xl_fast_decodes_with_its_own_tiny_vae(engines: dict[str, Engine]) -> None:
    """``taes-shapes-xl`` (``ssdxl train tiny-vae --model shapes-xl``) reads the 8x latents: found by their latent
    space, it draws the 128x128 picture close to the VAE's."""
    shipped = builtin.tiny_vae(latent_space(engines["shapes-xl"].base.components.vae))
    assert shipped is not None and shipped.name == "taes-shapes-xl"
    engine = engines["shapes-xl-vega"]  # the students borrow the teacher's VAE, so its tiny VAE too
    request = GenerationRequest("a large red circle on a black background", seed=1, steps=8)
    plain = np.asarray(engine.generate(request).images[0].image, dtype=np.float64)
    fast = engine.generate(dataclasses.replace(request, fast_decode=True)).images[0]
    assert f"Tiny VAE: {shipped.name}" in fast.infotext
    fast_pixels = np.asarray(fast.image, dtype=np.float64)
    assert fast_pixels.shape == plain.shape == (128, 128, 3)
    psnr = 10 * np.log10(255.0**2 / np.mean((fast_pixels - plain) ** 2))
    assert psnr > 24, psnr
