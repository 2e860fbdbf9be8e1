"""``ssdxl bench`` (ssdxl's paths against plain diffusers, same weights, same run) and
``ssdxl export openvino`` (the IR the OpenVINO backend runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ssdxl.errors import UserError

export_app = typer.Typer(no_args_is_help=True, help="Export a model for another runtime.")


def bench(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Folder, .safetensors, built-in or repo id.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="Random weights of a preset instead: sdxl-base, ssd-1b, vega.")
    ] = None,
    scale: Annotated[str, typer.Option("--scale", help="With --preset: full or tiny.")] = "full",
    size: Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT.")] = "512x512",
    steps: Annotated[int, typer.Option("--steps")] = 4,
    guidance: Annotated[float, typer.Option("--guidance")] = 7.0,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per path, after one warm-up.")] = 2,
    paths: Annotated[
        str | None, typer.Option("--paths", help="Comma-separated subset of the paths (default: the main five).")
    ] = None,
    cache_interval: Annotated[int, typer.Option("--cache-interval", help="DeepCache interval of its path.")] = 3,
    guidance_cutoff: Annotated[float, typer.Option("--guidance-cutoff", help="Of the cfg-cutoff path.")] = 0.5,
    optimum_python: Annotated[
        str | None,
        typer.Option(
            "--optimum-python",
            help="Python of an environment with optimum-intel, for the optimum-intel path "
            "(default: $SSDXL_OPTIMUM_PYTHON).",
        ),
    ] = None,
    sdcpp_python: Annotated[
        str | None,
        typer.Option(
            "--sdcpp-python",
            help="Python of an environment with stable-diffusion-cpp-python, for the sdcpp-* paths "
            "(default: $SSDXL_SDCPP_PYTHON).",
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result here.")] = None,
    markdown_out: Annotated[Path | None, typer.Option("--markdown", help="Write the table here.")] = None,
) -> None:
    """Time text encoding, UNet steps, VAE decode and the whole image for ssdxl and its baselines."""
    from ssdxl.speed.bench import DEFAULT_PATHS, PATHS, Settings, run_benchmark
    from ssdxl.speed.report import markdown

    chosen = [p.strip() for p in paths.split(",")] if paths else list(DEFAULT_PATHS)
    unknown = [p for p in chosen if p not in PATHS]
    if unknown:
        raise UserError(f"unknown path(s) {', '.join(unknown)}; choose from: {', '.join(PATHS)}")
    width, height = _size(size)
    components = _components(model, preset, scale)
    settings = Settings(
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        repeats=repeats,
        cache_interval=cache_interval,
        guidance_cutoff=guidance_cutoff,
        optimum_python=optimum_python,
        sdcpp_python=sdcpp_python,
    )
    result = run_benchmark(components, settings, chosen, log=lambda line: typer.echo(line, err=True))
    table = markdown(result)
    typer.echo(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    if markdown_out is not None:
        markdown_out.write_text(table)


@export_app.command("openvino")
def export_openvino(
    model: Annotated[str, typer.Argument(help="Folder, .safetensors, built-in name or repo id.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Default: the cache folder --backend openvino reads.")
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Quantize the UNet to INT8 with NNCF (activations and weights; see --int8-mode and docs)."
        ),
    ] = False,
    int8_mode: Annotated[
        str,
        typer.Option(
            "--int8-mode",
            help="full (activations and weights), hybrid (convolutions fully, other weights only) or weights "
            "(weight compression only, no calibration).",
        ),
    ] = "full",
    calibration: Annotated[
        int, typer.Option("--calibration", min=1, max=512, help="Prompts the model samples to calibrate INT8.")
    ] = 8,
    calibration_prompts: Annotated[
        Path | None, typer.Option("--calibration-prompts", help="A text file of calibration prompts, one per line.")
    ] = None,
    calibration_size: Annotated[
        str | None,
        typer.Option("--calibration-size", help="WxH the calibration images are made at (default: the model's)."),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            help="LoRA file or name, optionally :WEIGHT (repeatable): export the UNet with them fused, where "
            "generate looks for that LoRA set (a few-step LoRA's real-time path).",
        ),
    ] = None,
    lora_dir: Annotated[list[Path] | None, typer.Option("--lora-dir", help="Folder of LoRAs --lora names.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32 or bfloat16: the precision traced.")] = "auto",
) -> None:
    """Convert a model's UNet and VAE decoder to OpenVINO IR (then generate uses them automatically; without this
    command the first generation exports the model itself, without INT8)."""
    from ssdxl.adapters.library import split_weight
    from ssdxl.sampling.engine import Engine
    from ssdxl.speed import calibration as calib
    from ssdxl.speed import openvino_backend
    from ssdxl.speed.runtime import lora_set_dir

    if int8_mode not in openvino_backend.INT8_MODES:
        raise UserError(f"--int8-mode must be one of {', '.join(openvino_backend.INT8_MODES)}, not {int8_mode!r}")
    prompts = _prompt_file(calibration_prompts) if calibration_prompts is not None else None
    width, height = _size(calibration_size, "--calibration-size") if calibration_size else (None, None)
    loras = [split_weight(text) for text in lora or []]
    engine = Engine.load(model, device="cpu", dtype=dtype, backend="torch", lora_dirs=tuple(lora_dir or ()))
    infos = [(engine.adapters.lora(ref), weight) for ref, weight in loras]  # an unknown LoRA fails before any work
    if not engine.base.hash and output is None:
        raise UserError(f"{model} has no weights file to key the cache by; pass --output")
    folder = output or openvino_backend.default_dir(engine.base.hash)
    if infos and output is None:
        folder = lora_set_dir(folder, infos)
    mode = int8_mode if int8 else None
    if mode in ("full", "hybrid"):
        prompts = (prompts or calib.default_prompts(engine, calibration))[:calibration]
    calib.export_model(
        engine,
        folder,
        int8=mode,
        prompts=prompts or (),
        loras=loras,
        width=width,
        height=height,
        progress=True,
        log=lambda message: typer.echo(message, err=True),
    )
    typer.echo(f"wrote {folder}")


def _prompt_file(path: Path) -> list[str]:
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --calibration-prompts {path}: {exc}") from None
    if not prompts:
        raise UserError(f"--calibration-prompts {path} holds no prompts")
    return prompts


def _size(text: str, option: str = "--size") -> tuple[int, int]:
    """``--size WxH`` as (width, height), positive multiples of 8."""
    from ssdxl.sampling.limits import parse_size

    width, height = parse_size(text, option)
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise UserError(f"{option} sides must be positive multiples of 8; got {text}")
    return width, height


def _components(model: str | None, preset: str | None, scale: str):
    """Float32 components: the baselines start from diffusers' CPU default."""
    import torch

    from ssdxl.models.components import build_components
    from ssdxl.models.loading import load_components
    from ssdxl.models.presets import get_preset

    if (model is None) == (preset is None):
        raise UserError("give exactly one of --model or --preset")
    if preset is not None:
        return build_components(get_preset(preset, scale), seed=0)
    return load_components(model, dtype=torch.float32)
