"""``ssdxl generate``'s control options end to end on the built-in model: units, hires fix, outpainting,
image prompts; bad options exit 2 with one line."""

from __future__ import annotations

import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.models import builtin

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """A random ControlNet that fits the built-in model (its VAE downsamples 4x: three map-encoder stages)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(builtin.resolve("shapes") / "unet")
    torch.manual_seed(0)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96))
    with torch.no_grad():
        for param in [*cn.controlnet_down_blocks.parameters(), *cn.controlnet_mid_block.parameters()]:
            param.add_(torch.randn_like(param) * 0.05)
    folder = tmp_path_factory.mktemp("cn") / "cn-test"
    cn.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("pics") / "photo.png"
    image = Image.new("RGB", (64, 64), "navy")
    ImageDraw.Draw(image).ellipse((12, 12, 50, 50), fill="red")
    image.save(path)
    return path


def test_units_hires_and_outpaint_from_the_command_line(net, photo, tmp_path):
    out = tmp_path / "unit.png"
    result = run("generate", "a red circle", "--steps", 2, "--seed", 1, "-o", out, "--controlnet",
                 f"{net}:{photo}:0.7:preprocessor=canny:end=0.5")  # fmt: skip
    assert result.exit_code == 0, result.output
    plain = tmp_path / "plain.png"
    assert run("generate", "a red circle", "--steps", 2, "--seed", 1, "-o", plain).exit_code == 0
    assert Image.open(out).tobytes() != Image.open(plain).tobytes()
    assert 'ControlNet 0: "Module: canny, Model: cn-test, Weight: 0.7' in Image.open(out).text["parameters"]

    result = run(
        "generate", "a red circle", "--steps", 2, "-o", tmp_path / "big.png", "--hires", "2x", "--hires-steps", 2
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "big.png").size == (128, 128)
    assert "Hires upscale: 2" in Image.open(tmp_path / "big.png").text["parameters"]

    result = run(
        "generate", "a red circle", "--steps", 2, "-i", photo, "--outpaint", "x=16", "-o", tmp_path / "wide.png"
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "wide.png").size == (96, 64)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--controlnet", "no-such-net:{photo}"], "unknown ControlNet 'no-such-net'"),
        (["--controlnet", "{net}"], "no control image"),
        (["--controlnet", "{net}:{photo}:bogus=1"], "unknown setting 'bogus'"),
        (["--controlnet", "{net}:{photo}:start=x"], "start='x' is not a valid float"),
        (["--controlnet", "{net}:{photo}:3"], "control scale must be between 0 and 2"),
        (["--hires", "2q"], "--hires takes a scale"),
        (["--ip-adapter", "x.safetensors"], "needs at least one --image-prompt"),
        (["--outpaint", "left=8"], "outpainting needs an init image"),
        (["--controlnet", "{net}:{photo}", "--cache-interval", "2"], "DeepCache"),
    ],
)
def test_bad_control_options_exit_2_with_one_line(net, photo, tmp_path, args, message):
    args = [a.format(net=net, photo=photo) for a in args]
    result = run("generate", "x", "--steps", 1, "-o", tmp_path / "x.png", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
