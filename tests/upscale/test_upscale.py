"""Upscalers: spandrel models (tiny random ESRGAN and Real-ESRGAN Compact files) found by name or path,
tiled runs that match untiled ones, the pickle policy, size limits, PIL filters, latent modes, the CLI."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from ssdxl.errors import UserError
from ssdxl.upscale import (
    LATENT_MODES,
    MAX_UPSCALE_SIDE,
    UpscaleModel,
    is_latent_mode,
    list_upscalers,
    load_upscaler,
    resolve_upscaler,
    upscale_image,
    upscale_latents,
)
from ssdxl.upscale.image import model_passes
from ssdxl.upscale.models import import_spandrel
from ssdxl.upscale.tiling import span_weights, tile_spans


def save(module: torch.nn.Module, path, **bias_shift: float):
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    for key, shift in bias_shift.items():
        state[key.replace("_", ".")] += shift
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    """tiny_esrgan (4x), tiny_compact (2x), a .pth twin of the ESRGAN, a scale-1 restorer and a junk file."""
    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    root = tmp_path_factory.mktemp("upscalers")
    torch.manual_seed(0)
    esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    # random weights give near-black output that clamps to 0; a bias puts it mid-range, so comparisons mean something
    save(esrgan, root / "tiny_esrgan.safetensors", model_10_bias=0.5)
    torch.save(esrgan.state_dict(), root / "pickled_esrgan.pth")
    save(Compact(num_feat=8, num_conv=2, upscale=2), root / "tiny_compact.safetensors")
    restorers = root / "restorers"
    restorers.mkdir()
    save(Compact(num_feat=8, num_conv=2, upscale=1), restorers / "restorer.safetensors")
    save_file({"weight": torch.zeros(3, 3)}, str(restorers / "junk.safetensors"))
    return root


def noise_image(width: int, height: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(Image.new(mode, (1, 1)).getbands())
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def test_spandrel_imports_without_leaving_a_torchvision_stand_in():
    spandrel = import_spandrel()
    assert hasattr(spandrel, "ModelLoader")
    modules = [sys.modules[name] for name in list(sys.modules) if name.startswith("torchvision")]
    assert all(getattr(module, "__file__", None) for module in modules)  # a real torchvision, or none


def test_a_missing_spandrel_is_a_user_error_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)
    with pytest.raises(UserError, match=r"pip install --no-deps spandrel==0\.4\.2"):
        import_spandrel()


def test_models_load_by_name_from_a_folder_and_by_path(model_dir):
    by_name = resolve_upscaler("TINY_ESRGAN", [model_dir])
    assert by_name.path == model_dir / "tiny_esrgan.safetensors"
    model = by_name.load()
    assert (model.scale, model.architecture, model.input_channels) == (4, "ESRGAN", 3)
    assert load_upscaler(by_name.path) is model  # cached
    compact = resolve_upscaler(str(model_dir / "tiny_compact.safetensors")).load()
    assert (compact.scale, compact.architecture) == (2, "RealESRGAN Compact")

    records = {r["name"]: r for r in list_upscalers([model_dir])}
    assert list(records)[:3] == ["None", "Lanczos", "Nearest"]
    assert set(records) == {"None", "Lanczos", "Nearest", "tiny_esrgan", "tiny_compact", "restorer", "junk"}
    assert records["tiny_esrgan"] == {
        "name": "tiny_esrgan",
        "model_name": "tiny_esrgan",
        "model_path": str(model_dir / "tiny_esrgan.safetensors"),
        "model_url": None,
        "scale": None,
    }
    assert records["Lanczos"]["scale"] == 4
    with pytest.raises(UserError, match="not found: not a file or one of None, Lanczos"):
        resolve_upscaler("nope", [model_dir])
    with pytest.raises(UserError, match="folder .* not found"):
        list_upscalers([model_dir / "missing"])


def test_output_is_the_native_scale_or_the_size_asked_for(model_dir):
    image = noise_image(20, 12)
    esrgan = resolve_upscaler("tiny_esrgan", [model_dir])
    assert upscale_image(image, esrgan).size == (80, 48)
    assert upscale_image(image, resolve_upscaler("tiny_compact", [model_dir])).size == (40, 24)
    assert upscale_image(image, esrgan, size=(50, 30)).size == (50, 30)
    assert upscale_image(image, esrgan, scale=1.5).size == (30, 18)
    with pytest.raises(UserError, match="not both"):
        upscale_image(image, esrgan, scale=2, size=(40, 24))


def test_a_4x_model_asked_for_2x_runs_once_and_resizes_down(model_dir):
    image = noise_image(20, 12)
    esrgan = resolve_upscaler("tiny_esrgan", [model_dir])
    four = upscale_image(image, esrgan, tile=0)
    two = upscale_image(image, esrgan, scale=2, tile=0)
    assert two.size == (40, 24)
    assert np.array_equal(np.asarray(two), np.asarray(four.resize((40, 24), Image.Resampling.LANCZOS)))
    assert upscale_image(image, resolve_upscaler("tiny_compact", [model_dir]), scale=8).size == (160, 96)
    assert [model_passes((10, 10), (10 * f, 10 * f), 4) for f in (1, 2, 4, 8, 16)] == [0, 1, 1, 2, 2]
    assert model_passes((10, 10), (80, 80), 2) == 3


def test_tiled_output_matches_the_untiled_one(model_dir):
    model = resolve_upscaler("tiny_esrgan", [model_dir]).load()
    image = noise_image(56, 40, seed=1)
    whole = np.asarray(upscale_image(image, model, tile=0), dtype=np.float64)
    assert whole.std() > 5  # not a constant image that would match anything
    for tile, overlap in [(24, 8), (32, 12), (20, 4)]:
        tiled = np.asarray(upscale_image(image, model, tile=tile, overlap=overlap), dtype=np.float64)
        assert np.abs(tiled - whole).mean() <= 1.0, (tile, overlap)
    with pytest.raises(UserError, match="more than twice the overlap"):
        upscale_image(image, model, tile=16, overlap=8)


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (33, 32, 8), (77, 24, 10), (500, 64, 16), (20, 32, 8)])
def test_tile_weights_cover_every_pixel_and_sum_to_one(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(end - start == min(tile, length) for start, end in spans)
    assert all(a[1] - b[0] >= overlap for a, b in zip(spans, spans[1:], strict=False))
    total = torch.zeros(length * 2)
    for (start, _), weight in zip(spans, span_weights(spans, 2), strict=True):
        total[start * 2 : start * 2 + len(weight)] += weight
    assert torch.allclose(total, torch.ones_like(total))


def test_pickled_models_need_allow_pickle(model_dir):
    pth = model_dir / "pickled_esrgan.pth"
    for attempt in (lambda: resolve_upscaler("pickled_esrgan", [model_dir]), lambda: load_upscaler(pth)):
        with pytest.raises(UserError, match="--allow-pickle"):
            attempt()
    assert "pickled_esrgan" not in {r["name"] for r in list_upscalers([model_dir])}
    assert "pickled_esrgan" in {r["name"] for r in list_upscalers([model_dir], allow_pickle=True)}
    model = resolve_upscaler("pickled_esrgan", [model_dir], allow_pickle=True).load()
    assert (model.scale, model.architecture) == (4, "ESRGAN")


def test_files_that_are_not_upscalers_are_refused(model_dir, tmp_path):
    with pytest.raises(UserError, match="RealESRGAN Compact model of scale 1 .*not an upscaler"):
        load_upscaler(model_dir / "restorers" / "restorer.safetensors")
    with pytest.raises(UserError, match="not an upscaler architecture spandrel knows"):
        load_upscaler(model_dir / "restorers" / "junk.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable upscaler file"):
        load_upscaler(broken)
    with pytest.raises(UserError, match="unsupported upscaler file model.onnx"):
        load_upscaler(tmp_path / "model.onnx")
    with pytest.raises(UserError, match="latent upscale mode"):
        resolve_upscaler("Latent (bicubic)")


class Unrunnable:
    """A model descriptor that fails the test if the upscale ever runs it."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) before the size check")

    def __call__(self, *_):
        raise AssertionError("the model ran before the size check")


def test_too_large_results_are_refused_before_running(tmp_path):
    model = UpscaleModel(Unrunnable(), tmp_path / "x.safetensors", 4, "ESRGAN", 3, 3)
    with pytest.raises(UserError, match=f"the result would be 12000x40; the limit is {MAX_UPSCALE_SIDE}"):
        upscale_image(Image.new("RGB", (3000, 10)), model)
    with pytest.raises(UserError, match="makes 8400x40 on the way to 3150x15 .*the limit is 8192"):
        upscale_image(Image.new("RGB", (2100, 10)), model, scale=1.5)
    with pytest.raises(UserError, match="the limit is 8192"):
        upscale_image(Image.new("RGB", (3000, 10)), resolve_upscaler("Lanczos"))


def test_builtin_filters_are_pil_resizes():
    image = noise_image(16, 10)
    for name, fil in [("Lanczos", Image.Resampling.LANCZOS), ("nearest", Image.Resampling.NEAREST)]:
        result = upscale_image(image, resolve_upscaler(name), scale=2)
        assert np.array_equal(np.asarray(result), np.asarray(image.resize((32, 20), fil)))
    assert upscale_image(image, resolve_upscaler("None"), size=(24, 15)).size == (24, 15)
    palette = image.convert("P")
    assert upscale_image(palette, resolve_upscaler("Lanczos")).mode == "RGB"


def test_alpha_and_greyscale_survive_a_model(model_dir):
    model = resolve_upscaler("tiny_esrgan", [model_dir]).load()
    rgba = noise_image(12, 8, "RGBA")
    result = upscale_image(rgba, model, scale=2)
    assert (result.mode, result.size) == ("RGBA", (24, 16))
    expected_alpha = rgba.getchannel("A").resize((24, 16), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(result.getchannel("A")), np.asarray(expected_alpha))
    assert upscale_image(noise_image(12, 8, "L"), model).mode == "L"
    assert upscale_image(noise_image(12, 8, "LA"), model).mode == "LA"


@pytest.mark.parametrize("mode", list(LATENT_MODES))
def test_latent_modes_resize_latents(mode):
    latents = torch.randn(2, 4, 8, 12, dtype=torch.bfloat16)
    resized = upscale_latents(latents, (16, 20), mode)
    assert resized.shape == (2, 4, 16, 20) and resized.dtype == torch.bfloat16
    assert is_latent_mode(mode)


def test_latent_mode_names_are_a1111s():
    assert list(LATENT_MODES) == [
        "Latent",
        "Latent (antialiased)",
        "Latent (bicubic)",
        "Latent (bicubic antialiased)",
        "Latent (nearest)",
        "Latent (nearest-exact)",
    ]
    assert not is_latent_mode("Lanczos")
    with pytest.raises(UserError, match="unknown latent upscale mode"):
        upscale_latents(torch.zeros(1, 4, 2, 2), (4, 4), "Latent (bogus)")


def cli(*args):
    from ssdxl.cli.main import app

    return CliRunner().invoke(app, ["upscale", *map(str, args)])


def test_cli_writes_the_upscaled_image(model_dir, tmp_path):
    source = tmp_path / "in.png"
    noise_image(20, 12).save(source)
    out = tmp_path / "out" / "big.png"
    result = cli(source, "--upscaler", "tiny_esrgan", "--upscaler-dir", model_dir, "--scale", 2, "-o", out)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (40, 24)
    result = cli(source, "-u", model_dir / "tiny_compact.safetensors", "--width", 50, "--tile", 8, "--overlap", 2,
                 "--device", "cpu", "-o", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (50, 30)


def test_cli_lists_upscalers():
    result = cli("--list")
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["None", "Lanczos", "Nearest"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["{img}", "--upscaler", "{dir}/pickled_esrgan.pth"], "--allow-pickle"),
        (["{img}", "--upscaler", "nope"], "upscaler 'nope' not found"),
        (["{tmp}/missing.png", "--upscaler", "Lanczos"], "no such file"),
        (["{img}"], "give an IMAGE and --upscaler"),
        (["{img}", "-u", "Lanczos", "--scale", 2000], "the limit is 8192"),
        (["{img}", "-u", "Lanczos", "-o", "{tmp}/out.gif"], "unsupported output format"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(model_dir, tmp_path, args, message):
    image = tmp_path / "in.png"
    noise_image(8, 8).save(image)
    args = [str(a).format(img=image, dir=model_dir, tmp=tmp_path) for a in args]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
