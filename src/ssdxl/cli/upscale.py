"""``ssdxl upscale``: make an image larger with a model (ESRGAN, SwinIR, ...) or Lanczos/Nearest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssdxl.errors import UserError


def upscale(
    image: Annotated[Path | None, typer.Argument(help="The image to upscale.")] = None,
    upscaler: Annotated[
        str | None, typer.Option("--upscaler", "-u", help="Lanczos, Nearest, None, a model's name or its file.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file (.png/.jpg/.webp).")] = Path(
        "upscaled.png"
    ),
    scale: Annotated[
        float | None, typer.Option("--scale", help="Factor; default: the model's own (4 for the filters).")
    ] = None,
    width: Annotated[int | None, typer.Option("--width", "-W", help="Result width (alone: keep the aspect).")] = None,
    height: Annotated[
        int | None, typer.Option("--height", "-H", help="Result height (alone: keep the aspect).")
    ] = None,
    tile: Annotated[int, typer.Option("--tile", help="Largest piece the model runs on at once; 0: whole.")] = 512,
    overlap: Annotated[int, typer.Option("--overlap", help="Pixels neighbouring tiles share, blended.")] = 32,
    upscaler_dir: Annotated[
        list[Path] | None, typer.Option("--upscaler-dir", help="Folder of upscaler models, named by file stem.")
    ] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow pickled .pth/.pt/.ckpt models (can run code).")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    list_names: Annotated[bool, typer.Option("--list", help="Print the upscaler names and exit.")] = False,
) -> None:
    """Upscale an image; models run tiled at their own scale (more passes or a Lanczos resize for other scales)."""
    from ssdxl.upscale import list_upscalers, resolve_upscaler, upscale_image

    dirs = list(upscaler_dir or [])
    if list_names:
        for record in list_upscalers(dirs, allow_pickle=allow_pickle):
            typer.echo(record["name"])
        return
    if image is None or upscaler is None:
        raise UserError("give an IMAGE and --upscaler NAME (or --list)")
    from ssdxl.cli.main import check_output, open_image

    check_output(output)
    from ssdxl.sampling.precision import pick_device

    source = open_image(image, "IMAGE")
    if width is not None and height is None:
        height = max(1, round(source.height * width / source.width))
    elif height is not None and width is None:
        width = max(1, round(source.width * height / source.height))
    size = None if width is None or height is None else (width, height)
    chosen = resolve_upscaler(upscaler, dirs, allow_pickle=allow_pickle)
    result = upscale_image(source, chosen, scale, size, tile=tile, overlap=overlap, device=pick_device(device))
    if output.suffix.lower() in (".jpg", ".jpeg"):
        result = result.convert("RGB" if len(result.getbands()) > 2 else "L")
    output.parent.mkdir(parents=True, exist_ok=True)
    result.save(output)
    typer.echo(f"{output}  {result.width}x{result.height}  ({chosen.name})")
