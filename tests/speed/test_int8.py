"""INT8 exports: calibration data recorded from the model's own sampling, NNCF's full and hybrid quantization
(activations and weights) and weight compression, the images they make, and the CLI's choices and errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.errors import UserError
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed import calibration, openvino_backend
from ssdxl.speed.bench import psnr

pytest.importorskip("openvino")
pytest.importorskip("nncf", reason="INT8 needs NNCF: pip install 'ssdxl[openvino]'")
REQUEST = GenerationRequest("a green triangle", seed=2, steps=4)


@pytest.fixture(scope="module")
def torch_engine(tiny_dir):
    return Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", backend="torch")


@pytest.fixture(scope="module")
def samples(torch_engine):
    return calibration.record_unet_inputs(torch_engine, calibration.PROMPTS[:2], steps=3)


def test_calibration_records_every_guided_call_in_the_graphs_input_order(torch_engine, samples):
    assert len(samples) == 2 * 3  # prompts x steps, one guided call each
    sample, timesteps, text, pooled, time_ids = samples[0]
    assert sample.shape == (2, 4, 8, 8) and timesteps.shape == (2,) and text.shape[0] == 2
    assert pooled.shape[0] == 2 and time_ids.shape == (2, 6) and all(a.dtype == np.float32 for a in samples[0])
    assert samples[0][1][0] > samples[-1][1][0]  # the schedule runs from noisy to clean
    assert calibration.default_prompts(torch_engine, 20)[16] == calibration.PROMPTS[0]  # cycled


def test_builtin_models_calibrate_on_their_own_captions():
    builtin = Engine.load(device="cpu", backend="torch")
    prompts = calibration.default_prompts(builtin, 4)
    assert len(set(prompts)) == 4 and all(p not in calibration.PROMPTS for p in prompts)


@pytest.mark.parametrize("mode", ["full", "hybrid"])
def test_quantized_unet_has_int8_activations_and_draws_the_image(torch_engine, samples, tiny_dir, tmp_path, mode):
    folder = openvino_backend.export(torch_engine.base.components, tmp_path / mode, int8=mode, calibration=samples)
    assert json.loads((folder / openvino_backend.MANIFEST).read_text())["int8"] == mode
    unet_xml = (folder / openvino_backend.UNET_XML).read_text()
    assert 'type="FakeQuantize"' in unet_xml  # activations quantized
    assert 'type="FakeQuantize"' not in (folder / openvino_backend.DECODER_XML).read_text()
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", backend="torch")
    engine.runtime = type(engine.runtime)("openvino", cpu=True)
    engine.runtime.add_openvino(engine.base.components, folder)
    image = engine.generate(REQUEST).images[0]
    assert image.params["backend"] == "openvino"
    assert psnr(torch_engine.generate(REQUEST).images[0].image, image.image) > 20


def test_weights_mode_needs_no_data_and_the_others_do(torch_engine, tmp_path):
    folder = openvino_backend.export(torch_engine.base.components, tmp_path / "w", int8="weights")
    assert 'type="FakeQuantize"' not in (folder / openvino_backend.UNET_XML).read_text()
    with pytest.raises(UserError, match="needs calibration data"):
        openvino_backend.export(torch_engine.base.components, tmp_path / "f", int8="full")
    with pytest.raises(UserError, match="unknown INT8 mode 'int4'"):
        openvino_backend.export(torch_engine.base.components, tmp_path / "f", int8="int4")


def test_export_cli_calibrates_and_replaces_an_earlier_export(tiny_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ir"
    base = ["export", "openvino", str(tiny_dir("vega")), "-o", str(out)]
    assert runner.invoke(app, base).exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    args = ["--int8", "--calibration", "2", "--calibration-prompts", str(prompts), "--calibration-size", "64x64"]
    result = runner.invoke(app, [*base, *args])
    assert result.exit_code == 0, result.output
    assert "calibrating on 2 prompts" in result.output
    assert json.loads((out / openvino_backend.MANIFEST).read_text())["int8"] == "full"  # the explicit one replaced it
    for bad, message in (
        (["--int8", "--int8-mode", "int4"], "--int8-mode must be one of full, hybrid, weights"),
        (["--int8", "--calibration-prompts", str(tmp_path / "none.txt")], "cannot read --calibration-prompts"),
        (["--int8", "--calibration-size", "60x64"], "--calibration-size sides must be positive multiples of 8"),
    ):
        result = runner.invoke(app, [*base, *bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_export_cli_fuses_a_few_step_lora_where_generate_finds_it(tiny_dir, tmp_path, monkeypatch):
    from ssdxl.adapters.synthetic import make_lora

    monkeypatch.setenv("SSDXL_CACHE", str(tmp_path / "cache"))
    loras = tmp_path / "loras"
    engine = Engine.load(tiny_dir("vega"), device="cpu", backend="torch")
    make_lora(engine.base.components, loras / "lcm-lora-tiny.safetensors", seed=4, scale=0.05)
    args = ["export", "openvino", str(tiny_dir("vega")), "--lora", "lcm-lora-tiny", "--lora-dir", str(loras)]
    result = CliRunner().invoke(app, [*args, "--int8", "--calibration", "1"])
    assert result.exit_code == 0, result.output
    folder = openvino_backend.default_dir(engine.base.hash)
    (fused,) = folder.with_name(f"{folder.name}.loras").iterdir()
    assert json.loads((fused / openvino_backend.MANIFEST).read_text())["int8"] == "full"
    assert not (fused / openvino_backend.DECODER_XML).exists()
    runs = Engine.load(tiny_dir("vega"), device="cpu", backend="openvino", lora_dirs=(loras,))
    made = fused.stat().st_mtime_ns
    image = runs.generate(GenerationRequest("a red circle", seed=1, loras=[("lcm-lora-tiny", 1.0)])).images[0]
    assert image.params["backend"] == "openvino (LoRAs fused)" and fused.stat().st_mtime_ns >= made
    assert 'type="FakeQuantize"' in (fused / openvino_backend.UNET_XML).read_text()  # the one the CLI made
    bad = CliRunner().invoke(app, [*args[:3], "--lora", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
