"""One request contract for the CLI and the Python API (the server's side: tests/server/test_request_contract_api.py):
the same limits, the same WxH order, refusals at once and in one line, warnings that do not fail."""

import dataclasses
import importlib.metadata
import json
import os

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.errors import FieldError, UserError
from ssdxl.sampling import limits
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server import schemas

runner = CliRunner()
FAST = ["-W", 64, "-H", 64, "--steps", 2, "-q"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def refused(result, *words):
    """Exit code 2, one line on stderr naming ``words``, no traceback."""
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    assert all(word in result.stderr for word in words), result.stderr


def req(**kw):
    return GenerationRequest(**{"prompt": "a red circle", "seed": 1, "steps": 2, "width": 64, "height": 64, **kw})


# 1: --strength without an init image


def test_strength_without_an_init_image_is_refused_not_pure_noise(engine, tiny_dir, tmp_path):
    with pytest.raises(FieldError, match="strength.*init image") as caught:
        engine.generate(req(strength=0.5))
    assert caught.value.field == "strength"
    refused(run("generate", "x", "-m", tiny_dir("vega"), "--strength", 0.5, "-o", tmp_path / "a.png"), "strength")
    assert not (tmp_path / "a.png").exists()


# 2: an empty prompt is allowed everywhere (A1111 and diffusers allow it)


def test_an_empty_prompt_makes_an_image(engine, tiny_dir, tmp_path):
    assert engine.generate(req(prompt="")).images[0].image.size == (64, 64)
    result = run("generate", "", "-m", tiny_dir("vega"), *FAST, "-o", tmp_path / "e.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.png").is_file()


# 3 and 4: one set of limits, read by the engine, the CLI and the server's field types


def test_the_server_schemas_read_the_shared_limits():
    def bounds(annotated):
        constraints = annotated.__metadata__[0].metadata  # pydantic's Field(...) as annotated-types Ge, Le, MaxLen
        return {name: getattr(c, name) for c in constraints for name in ("ge", "le", "max_length") if hasattr(c, name)}

    assert bounds(schemas.Side) == {"ge": limits.MIN_SIDE, "le": limits.MAX_SIDE}
    assert bounds(schemas.Steps) == {"ge": 1, "le": limits.MAX_STEPS}
    assert bounds(schemas.Samples) == {"ge": 1, "le": limits.MAX_SAMPLES}
    assert bounds(schemas.Prompt) == {"max_length": limits.MAX_PROMPT_CHARS}  # no min_length: "" is a prompt


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"prompt": "a" * (limits.MAX_PROMPT_CHARS + 1)}, "prompt"),
        ({"negative_prompt": "a" * (limits.MAX_PROMPT_CHARS + 1)}, "negative_prompt"),
        ({"width": limits.MAX_SIDE + 8}, "width"),
        ({"height": limits.MIN_SIDE - 8}, "height"),
        ({"steps": limits.MAX_STEPS + 1}, "steps"),
        ({"samples": limits.MAX_SAMPLES + 1}, "samples"),
        ({"guidance_scale": limits.MAX_GUIDANCE + 1}, "guidance_scale"),
    ],
)
def test_one_past_each_limit_is_refused_by_the_engine_naming_the_field(engine, change, field):
    with pytest.raises(FieldError) as caught:
        engine.resolve(req(**change))
    assert caught.value.field == field


def test_the_limits_themselves_are_accepted(engine):
    edge = req(steps=limits.MAX_STEPS, samples=limits.MAX_SAMPLES, prompt="a" * limits.MAX_PROMPT_CHARS)
    resolved = engine.resolve(dataclasses.replace(edge, width=limits.MAX_SIDE, height=limits.MIN_SIDE))
    assert (resolved.width, resolved.height, resolved.steps) == (limits.MAX_SIDE, limits.MIN_SIDE, limits.MAX_STEPS)


def test_the_cli_refuses_a_huge_prompt_and_too_many_steps_before_loading_a_model(monkeypatch, tmp_path):
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    refused(run("generate", "a" * 110_000, "-o", tmp_path / "a.png"), "prompt", f"{limits.MAX_PROMPT_CHARS:,}")
    refused(run("generate", "x", "--steps", limits.MAX_STEPS + 1, "-o", tmp_path / "a.png"), "steps")
    refused(run("generate", "x", "--samples", limits.MAX_SAMPLES + 1, "-o", tmp_path / "a.png"), "samples")


def test_a_server_may_lower_the_limits_but_never_raise_them():
    lowered = limits.RequestLimits(max_side=512, max_steps=20, max_samples=2)
    limits.check_request(req(width=512, steps=20, samples=2), lowered)
    for change, field in (({"width": 520}, "width"), ({"steps": 21}, "steps"), ({"samples": 3}, "samples")):
        with pytest.raises(FieldError) as caught:
            limits.check_request(req(**change), lowered)
        assert caught.value.field == field
    with pytest.raises(UserError, match="only lower"):
        limits.RequestLimits(max_side=limits.MAX_SIDE * 2)


# 5: sizes are (width, height) in requests, (height, width) in SDXL's time_ids, as diffusers' pipeline takes them


def test_parse_size_reads_width_then_height():
    assert limits.parse_size("96x64", "--original-size") == (96, 64)
    for bad in ("96", "axb", "96x64x2", "-8x64"):
        with pytest.raises(FieldError, match="--original-size"):
            limits.parse_size(bad, "--original-size")


def test_original_and_target_size_reach_time_ids_as_diffusers_builds_them(engine, monkeypatch):
    unet = engine.base.components.unet
    seen = []
    forward = unet.forward

    def recording(*args, **kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"][0].tolist())
        return forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", recording)
    engine.generate(req(width=64, height=96, original_size=(192, 128), crop_top_left=(8, 0), steps=1))
    pipe = engine.base.components.diffusers_pipeline()
    projection = engine.base.components.text_encoder_2.config.projection_dim
    # diffusers: StableDiffusionXLPipeline(original_size=(h, w), target_size=(h, w)); target defaults to the output
    expected = pipe._get_add_time_ids((128, 192), (8, 0), (96, 64), torch.float32, projection)[0].tolist()
    assert seen[0] == expected == [128, 192, 8, 0, 96, 64]


def test_the_cli_takes_original_size_as_wxh_and_records_it_so(tiny_dir, tmp_path):
    out = tmp_path / "o.png"
    result = run("generate", "x", "-m", tiny_dir("vega"), *FAST, "--original-size", "192x128", "-o", out)
    assert result.exit_code == 0, result.output
    assert json.loads(Image.open(out).info["ssdxl"])["original_size"] == [192, 128]


# 6: a refiner of another latent space is refused when it loads


def test_a_refiner_of_another_latent_space_is_refused_at_load(tiny_dir, tmp_path):
    refiner = tiny_dir("sdxl-refiner")  # `ssdxl init-random sdxl-refiner DIR --scale tiny`: VAE ÷8; the built-in's ÷4
    with pytest.raises(UserError, match="latents differ") as caught:
        Engine.load(refiner=refiner, device="cpu", dtype="float32")
    assert "VAE ÷4" in str(caught.value) and "VAE ÷8" in str(caught.value)
    refused(run("generate", "x", "--refiner", refiner, *FAST, "-o", tmp_path / "r.png"), "VAE ÷4", "VAE ÷8")


# 7: --from-png of an inpainted image needs its mask again


def test_from_png_of_an_inpainted_image_asks_for_its_mask(tiny_dir, tmp_path):
    init, mask, other = tmp_path / "init.png", tmp_path / "mask.png", tmp_path / "other.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 32, 64))
    m.save(mask)
    Image.new("L", (64, 64), 255).save(other)
    out = tmp_path / "inpainted.png"
    assert run("generate", "x", "-m", tiny_dir("vega"), "-i", init, "--mask", mask, *FAST, "-o", out).exit_code == 0
    params = json.loads(Image.open(out).info["ssdxl"])
    assert params["kind"] == "inpaint" and params["mask_hash"]
    again = ["generate", "--from-png", out, "-m", tiny_dir("vega"), "-q"]
    refused(run(*again, "-i", init, "-o", tmp_path / "b.png"), "inpainted", "--mask")
    refused(run(*again, "-i", init, "--mask", other, "-o", tmp_path / "b.png"), "not the mask")
    result = run(*again, "-i", init, "--mask", mask, "-o", tmp_path / "b.png")
    assert result.exit_code == 0, result.output
    assert list(Image.open(tmp_path / "b.png").getdata()) == list(Image.open(out).getdata())


# 8: an output path that cannot be written is refused before any work


def test_an_unwritable_output_is_one_line_before_the_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(Engine, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    (tmp_path / "afile").write_text("")
    refused(run("generate", "x", "-o", tmp_path / "afile" / "x.png"), "is a file")
    (tmp_path / "folder.png").mkdir()
    refused(run("generate", "x", "-o", tmp_path / "folder.png"), "is a folder")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root may write anywhere: pretend it may not
    refused(run("generate", "x", "-o", tmp_path / "x.png"), "permission denied")


def test_a_save_that_fails_anyway_is_one_line(tiny_dir, tmp_path, monkeypatch):
    def full(*_):
        raise OSError(28, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setattr("ssdxl.output.files.save_image", full)
    refused(run("generate", "x", "-m", tiny_dir("vega"), *FAST, "-o", tmp_path / "x.png"), "No space left")


# 9: a size far above the model's own is a warning, not a failure


def test_a_size_far_above_the_models_own_is_warned_about(engine, tiny_dir, tmp_path):
    assert engine.warnings(engine.resolve(req())) == []
    big = engine.generate(req(width=128, height=128, steps=1))  # the tiny models' own size is 64x64: 4x the area
    assert len(big.warnings) == 1 and "4.0x the area" in big.warnings[0] and "64x64" in big.warnings[0]
    big_args = ["-W", 128, "-H", 128, "--steps", 1, "-q", "-o", tmp_path / "b.png"]
    result = run("generate", "x", "-m", tiny_dir("vega"), *big_args)
    assert result.exit_code == 0 and "warning: 128x128 is 4.0x the area" in result.stderr, result.output


# 10: ssdxl --version


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"ssdxl {importlib.metadata.version('ssdxl')}"


# 11: <lora:...> tags are applied or refused, never ignored


def test_lora_tags_are_applied_or_refused(engine, tiny_dir, tmp_path):
    refused(run("generate", "a cat <lora:nonexistent:1>", *FAST, "-o", tmp_path / "l.png"), "nonexistent", "shapes-rt")
    with pytest.raises(FieldError, match="LoRAs are applied from the prompt only") as caught:
        engine.resolve(req(negative_prompt="blurry <lora:style:1>"))
    assert caught.value.field == "negative_prompt"
    refused(run("generate", "x", "-n", "blurry <lora:shapes-rt:1>", "-o", tmp_path / "l.png"), "negative_prompt")
