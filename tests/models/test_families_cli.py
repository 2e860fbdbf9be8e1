"""What a PNG records about the model's family settings, and what ``--from-png`` does with it: the VAE must be given
again (and be the same file), the prediction and zero-SNR overrides come back, clip skip is kept for SD models, and
an AUTOMATIC1111 infotext's clip skip is not applied to SDXL (A1111 records it there without applying it)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.models.components import build_components
from ssdxl.models.presets import get_preset
from ssdxl.sampling.request import image_hash

runner = CliRunner()
TINY = ["--steps", "2", "--seed", "4", "-W", "64", "-H", "64"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def params(path) -> dict:
    return json.loads(Image.open(path).text["ssdxl"])


def test_prediction_and_clip_skip_come_back_and_the_vae_must_be_given_again(tiny_dir, tmp_path):
    vae = tmp_path / "vae"
    build_components(get_preset("sd21", "tiny"), seed=3).vae.save_pretrained(vae)
    first = tmp_path / "first.png"
    made = run("generate", "a red circle", "-m", tiny_dir("sd21"), "-o", first, *TINY, "--prediction", "eps",
               "--clip-skip", "2", "--vae", vae)  # fmt: skip
    assert made.exit_code == 0, made.output
    recorded = params(first)
    assert recorded["prediction"] == "epsilon" and recorded["clip_skip"] == 2 and recorded["vae"] == "vae"
    refused = run("generate", "--from-png", first, "-o", tmp_path / "x.png")
    assert refused.exit_code == 2 and "--vae" in refused.output
    again = tmp_path / "again.png"
    result = run("generate", "--from-png", first, "-o", again, "--vae", vae)
    assert result.exit_code == 0, result.output
    assert params(again)["prediction"] == "epsilon" and params(again)["clip_skip"] == 2
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


def test_an_a1111_sdxl_infotext_clip_skip_is_not_applied(tiny_dir, tmp_path):
    png = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 4, Size: 64x64, "
                                "Clip skip: 2, Version: v1.10.1")  # fmt: skip
    Image.new("RGB", (64, 64)).save(png, pnginfo=info)
    out = tmp_path / "out.png"
    result = run("generate", "--from-png", png, "-m", tiny_dir("vega"), "-o", out)
    assert result.exit_code == 0, result.output
    assert "ignoring the PNG's 'Clip skip: 2'" in result.output and params(out)["clip_skip"] == 1
    sd = run("generate", "--from-png", png, "-m", tiny_dir("sd15"), "-o", out)
    assert sd.exit_code == 0 and params(out)["clip_skip"] == 2


def test_a_mask_hashes_alike_in_colour_and_greyscale():
    mask = Image.new("RGB", (8, 8), (255, 255, 255))
    assert image_hash(mask) == image_hash(mask.convert("L"))
