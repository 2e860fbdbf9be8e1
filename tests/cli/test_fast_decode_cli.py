"""``ssdxl generate --fast-decode [--tiny-vae PATH]``: the built-in model's own tiny VAE, another model's TAESD-style
folder, the infotext record and ``--from-png`` re-creating the image bit for bit."""

from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import AutoencoderTiny
from PIL import Image
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.models import builtin

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def recorded(path) -> tuple[str, dict]:
    with Image.open(path) as image:
        return image.text["parameters"], json.loads(image.text["ssdxl"])


def taesdxl(folder, seed: int):
    torch.manual_seed(seed)
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4).save_pretrained(folder)
    return folder


def test_builtin_model_fast_decodes_with_its_own_tiny_vae_and_from_png_recreates_it(tmp_path):
    shipped = builtin.tiny_vae("VAE ÷4, 4 latent channels, latent scale 0.34595")
    assert shipped is not None and (shipped / "diffusion_pytorch_model.safetensors").stat().st_size < 1_000_000
    fast, plain, again = tmp_path / "fast.png", tmp_path / "plain.png", tmp_path / "again.png"
    common = ("a large red circle on a navy background", "--steps", 3, "--seed", 4, "-q")
    result = run("generate", *common, "--fast-decode", "-o", fast)
    assert result.exit_code == 0, result.output
    assert pixels(fast).shape == (64, 64, 3)
    text, params = recorded(fast)
    assert f"Tiny VAE: {shipped.name}" in text and "Tiny VAE hash: " in text
    assert params["fast_decode"] is True and params["tiny_vae"] == shipped.name
    assert run("generate", *common, "-o", plain).exit_code == 0
    assert "Tiny VAE" not in recorded(plain)[0] and not np.array_equal(pixels(fast), pixels(plain))
    result = run("generate", "--from-png", fast, "-o", again, "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(fast), pixels(again))


def test_another_model_needs_tiny_vae_and_from_png_needs_the_same_one(tiny_dir, tmp_path):
    model, out, again = tiny_dir("vega"), tmp_path / "fast.png", tmp_path / "again.png"
    common = ("a red circle", "-m", model, "-W", 64, "-H", 64, "--steps", 2, "--seed", 1, "-q")
    result = run("generate", *common, "--fast-decode", "-o", out)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "TAESDXL" in result.output and "--tiny-vae" in result.output

    tiny = taesdxl(tmp_path / "taesdxl", seed=0)
    result = run("generate", *common, "--fast-decode", "--tiny-vae", tiny, "-o", out)
    assert result.exit_code == 0, result.output
    assert pixels(out).shape == (64, 64, 3) and "Tiny VAE: taesdxl" in recorded(out)[0]

    result = run("generate", "--from-png", out, "-o", again, "-q")
    assert result.exit_code == 2 and "pass it again with --tiny-vae" in result.output
    other = taesdxl(tmp_path / "other" / "taesdxl", seed=1)
    result = run("generate", "--from-png", out, "--tiny-vae", other, "-o", again, "-q")
    assert result.exit_code == 2 and "is not the tiny VAE the image was decoded with" in result.output
    result = run("generate", "--from-png", out, "--tiny-vae", tiny, "-o", again, "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(out), pixels(again))

    (tmp_path / "taesd").mkdir()
    result = run("generate", *common, "--fast-decode", "--tiny-vae", taesdxl(tmp_path / "taesd" / "x", 2).parent,
                 "-o", out)  # fmt: skip
    assert result.exit_code == 2 and "not a diffusers AutoencoderTiny folder" in result.output
