"""The harness on a tiny model, one repeat: a well-formed JSON result and markdown table, from the
Python API and from ``ssdxl bench``; FLOPs counted on the meta device match those of a real call."""

import json
import os

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


def test_machine_description():
    info = machine.describe()
    assert info["cores"] >= 1 and len(info["load_average"]) == 3 and "torch" in info["packages"]
    assert machine.matmul_rate(torch.float32, size=128, repeats=1) > 0


def test_optimum_intel_needs_its_own_environment(monkeypatch):
    monkeypatch.delenv("SSDXL_OPTIMUM_PYTHON", raising=False)
    components = build_components(get_preset("vega", "tiny"), seed=0)
    result = run_benchmark(components, Settings(width=64, height=64, steps=1, repeats=1), ["optimum-intel"], log=print)
    (path,) = result["paths"]
    assert not path["available"] and "optimum-constraints.txt" in path["reason"] and not path["runs"]


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
