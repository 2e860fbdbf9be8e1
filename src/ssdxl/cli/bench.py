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
        bool, typer.Option("--int8", help="Compress weights to INT8 with NNCF (smaller, see docs).")
    ] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32 or bfloat16: the precision traced.")] = "auto",
) -> None:
    """Convert a model's UNet and VAE decoder to OpenVINO IR (then generate uses them automatically)."""
    from ssdxl.sampling.engine import Engine
    from ssdxl.speed import openvino_backend

    engine = Engine.load(model, device="cpu", dtype=dtype, backend="torch")
    if not engine.base.hash and output is None:
        raise UserError(f"{model} has no weights file to key the cache by; pass --output")
    folder = output or openvino_backend.default_dir(engine.base.hash)
    openvino_backend.export(engine.base.components, folder, int8=int8, progress=True)
    typer.echo(f"wrote {folder}")


def _size(text: str) -> tuple[int, int]:
    """``--size WxH`` as (width, height), positive multiples of 8."""
    from ssdxl.sampling.limits import parse_size

    width, height = parse_size(text, "--size")
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise UserError(f"--size sides must be positive multiples of 8; got {text}")
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
