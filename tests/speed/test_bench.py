"""The harness on a tiny model, one repeat: a well-formed JSON result and markdown table, from the
Python API and from ``ssdxl bench``; FLOPs counted on the meta device match those of a real call."""

import json
import os
import sys
import types

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.models.components import build_components
from ssdxl.models.presets import get_preset
from ssdxl.speed import machine
from ssdxl.speed.bench import Settings, run_benchmark
from ssdxl.speed.flops import unet_flops
from ssdxl.speed.report import markdown

PATHS = ["diffusers-fp32", "ssdxl", "ssdxl+deepcache"]


def test_run_benchmark_result_is_json_and_renders():
    components = build_components(get_preset("vega", "tiny"), seed=0)
    result = run_benchmark(components, Settings(width=64, height=64, steps=2, repeats=1), PATHS, log=lambda _: None)
    result = json.loads(json.dumps(result))
    assert [p["name"] for p in result["paths"]] == PATHS
    for path in result["paths"]:
        assert len(path["runs"]) == 1 and len(path["runs"][0]["steps"]) == 2
        assert path["stats"]["total"]["median"] > 0 and path["x_floor"] > 0
    assert result["paths"][0]["psnr_vs_fp32_db"] is None or result["paths"][0]["psnr_vs_fp32_db"] > 100
    assert result["model"]["unet_flops_per_step"] > 0 and result["load_average"]["start"]
    table = markdown(result)
    assert table.count("\n| ") >= len(PATHS) + 1 and "x vs diffusers-fp32" in table
    assert "x vs optimum-intel" not in table  # a column only for each baseline the run measured
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows) == len(PATHS) + 2 and len({row.count("|") for row in rows}) == 1


def test_bench_command_writes_json_and_markdown(tmp_path):
    args = ["bench", "--preset", "vega", "--scale", "tiny", "--size", "64x64", "--steps", "1", "--repeats", "1"]
    args += ["--paths", "ssdxl", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["paths"][0]["name"] == "ssdxl"
    assert "| ssdxl |" in (tmp_path / "r.md").read_text()


def test_bench_command_rejects_unknown_paths():
    result = CliRunner().invoke(app, ["bench", "--preset", "vega", "--paths", "warp-drive"])
    assert result.exit_code == 2 and "warp-drive" in result.output


def test_meta_device_flops_match_a_real_call():
    config = get_preset("ssd-1b", "tiny").unet
    unet = UNet2DConditionModel.from_config(config).to(torch.bfloat16)
    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    bf16 = {"dtype": torch.bfloat16}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(
            torch.randn(2, 4, 8, 8, **bf16),
            500,
            encoder_hidden_states=torch.randn(2, 77, config["cross_attention_dim"], **bf16),
            added_cond_kwargs={"text_embeds": torch.randn(2, pooled, **bf16), "time_ids": torch.randn(2, 6, **bf16)},
        )
    # the meta device dispatches attention to another kernel than the CPU: counts agree within a few %
    assert unet_flops(config, 64, 64) == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_meta_device_decoder_flops_match_a_real_decode():
    from diffusers import AutoencoderKL

    from ssdxl.speed.flops import decoder_flops

    config = get_preset("vega", "tiny").vae
    vae = AutoencoderKL.from_config(config)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.decode(torch.randn(1, vae.config.latent_channels, 8, 8))
    scale = 2 ** (len(config["block_out_channels"]) - 1)
    counted = decoder_flops(config, 8 * scale, 8 * scale, vae_scale=scale)
    assert counted == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_machine_description():
    info = machine.describe()
    assert info["cores"] >= 1 and len(info["load_average"]) == 3 and "torch" in info["packages"]
    assert machine.matmul_rate(torch.float32, size=128, repeats=1) > 0


@pytest.mark.parametrize(
    "name,variable,constraints",
    [("optimum-intel", "SSDXL_OPTIMUM_PYTHON", "optimum-constraints.txt"),
     ("sdcpp-q8_0", "SSDXL_SDCPP_PYTHON", "sdcpp-constraints.txt")],
)  # fmt: skip
def test_baselines_need_their_own_environment(monkeypatch, name, variable, constraints):
    monkeypatch.delenv(variable, raising=False)
    components = build_components(get_preset("vega", "tiny"), seed=0)
    result = run_benchmark(components, Settings(width=64, height=64, steps=1, repeats=1), [name], log=print)
    (path,) = result["paths"]
    assert not path["available"] and constraints in path["reason"] and variable in path["reason"] and not path["runs"]


@pytest.mark.skipif(
    not os.environ.get("SSDXL_OPTIMUM_PYTHON"), reason="set SSDXL_OPTIMUM_PYTHON to an optimum-intel environment"
)
def test_optimum_intel_runs_the_same_weights_and_latents():
    components = build_components(get_preset("vega", "tiny"), seed=0)
    settings = Settings(width=64, height=64, steps=3, repeats=1, guidance=5.0)
    result = run_benchmark(components, settings, ["diffusers-fp32", "optimum-intel"], log=lambda _: None)
    reference, optimum = result["paths"]
    assert optimum["available"], optimum["reason"]
    assert len(optimum["runs"]) == 1 and len(optimum["runs"][0]["steps"]) == 3
    assert optimum["psnr_vs_fp32_db"] > 25  # same weights and noise; OpenVINO computes in bf16 here


def test_stable_diffusion_cpp_runner_times_its_stages(monkeypatch, tmp_path):
    """sdcpp_run.py against a stand-in for stable-diffusion-cpp-python that logs and reports progress as the
    library does: per-step intervals from the progress callback, stages from the log lines, one image."""
    from PIL import Image

    from ssdxl.speed import sdcpp_run

    class Library(types.ModuleType):
        log = None

        def sd_log_callback(self, function):
            return function

        def sd_set_log_callback(self, function, _data):
            Library.log = function

        def sd_commit(self):
            return b"abc123"

        def sd_get_system_info(self):
            return b"System Info:\n AVX512 = 1 |"

    class StableDiffusion:
        def __init__(self, **options):
            self.options = options

        def generate_image(self, *, sample_steps, progress_callback, **settings):
            Library.log(1, b"get_learned_condition completed, taking 0.25s\n", None)
            for step in [0, *range(1, sample_steps + 1)]:
                progress_callback(step, sample_steps, 0.0)
            Library.log(1, b"decode_first_stage completed, taking 1.50s\n", None)
            return [Image.new("RGB", (settings["width"], settings["height"]), "red")]

    library = Library("stable_diffusion_cpp")
    library.StableDiffusion = StableDiffusion
    monkeypatch.setitem(sys.modules, "stable_diffusion_cpp", library)
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"weights")
    out, image = tmp_path / "r.json", tmp_path / "i.png"
    monkeypatch.setattr(sdcpp_run.importlib.metadata, "version", lambda _name: "0.4.7")
    args = ["--model", str(model), "--steps", "3", "--repeats", "2", "--width", "64", "--height", "48"]
    assert sdcpp_run.main([*args, "--out", str(out), "--image", str(image)]) == 0
    result = json.loads(out.read_text())
    assert len(result["runs"]) == 2 and all(len(r["steps"]) == 3 for r in result["runs"])
    assert result["runs"][0]["text"] == 0.25 and result["runs"][0]["decode"] == 1.5
    assert result["versions"]["stable-diffusion.cpp"] == "abc123" and "AVX512" in result["system_info"]
    assert Image.open(image).size == (64, 48)


def test_stable_diffusion_cpp_runner_refuses_bad_arguments(tmp_path, capsys):
    from ssdxl.speed import sdcpp_run

    with pytest.raises(SystemExit) as exit_info:
        sdcpp_run.main(["--model", str(tmp_path / "missing.safetensors"), "--out", "o", "--image", "i"])
    assert exit_info.value.code == 2 and "not found" in capsys.readouterr().err


STAND_IN = """#!{python}
import json, os, signal, sys
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
if os.environ.get("STAND_IN_KILLED"):
    os.kill(os.getpid(), signal.SIGKILL)
from PIL import Image
Image.new("RGB", (int(args["--width"]), int(args["--height"])), "blue").save(args["--image"])
run = dict(text=0.5, steps=[1.0] * int(args["--steps"]), cpu_steps=[2.0] * int(args["--steps"]), decode=3.0,
           total=9.0, cpu_total=18.0)
json.dump(dict(versions={{"stable-diffusion-cpp-python": "0.4.7"}}, setup_s=1.5, peak_rss_bytes=2**30,
               runs=[run] * int(args["--repeats"])), open(args["--out"], "w"))
"""


@pytest.mark.parametrize("killed", [False, True])
def test_another_environments_run_comes_back_as_runs_or_a_reason(tmp_path, monkeypatch, killed):
    """The benchmark's side of an external baseline (a stand-in for stable-diffusion.cpp's environment): the
    settings on its command line, its JSON and image back as timed runs, this process's weights let go for it,
    and a run the kernel killed (out of memory) reported as such rather than failing the benchmark."""
    python = tmp_path / "python"
    python.write_text(STAND_IN.format(python=sys.executable))
    python.chmod(0o755)
    monkeypatch.setenv("SSDXL_SDCPP_PYTHON", str(python))
    if killed:
        monkeypatch.setenv("STAND_IN_KILLED", "1")
    components = build_components(get_preset("vega", "tiny"), seed=0)
    settings = Settings(width=64, height=48, steps=3, repeats=2)
    (path,) = run_benchmark(components, settings, ["sdcpp-q8_0"], log=lambda _: None)["paths"]
    assert components.unet.device.type == "meta"  # the file is all the other process needs
    if killed:
        assert not path["available"] and "killed by signal 9" in path["reason"]
        return
    assert path["available"] and len(path["runs"]) == 2 and path["runs"][0]["steps"] == [1.0] * 3
    assert path["setup_s"] == 1.5 and path["peak_rss_bytes"] == 2**30 and path["psnr_vs_fp32_db"] is None
    assert path["description"].endswith("stable-diffusion-cpp-python 0.4.7")
