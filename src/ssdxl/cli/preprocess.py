"""``ssdxl preprocess``: make a ControlNet / T2I-Adapter control map from a picture, to look at or reuse."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssdxl.errors import UserError


def preprocess(
    name: Annotated[str | None, typer.Argument(help="Preprocessor, e.g. canny, depth (or 'list').")] = None,
    image: Annotated[Path | None, typer.Argument(help="The picture to turn into a map.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the map.")] = Path("control.png"),
    resolution: Annotated[
        int, typer.Option("--resolution", help="Short side of the map (rounded to 8); 0 keeps the image's size.")
    ] = 512,
    threshold_a: Annotated[
        float | None, typer.Option("--a", "--threshold-a", help="First slider (see --list); default: its default.")
    ] = None,
    threshold_b: Annotated[float | None, typer.Option("--b", "--threshold-b", help="Second slider.")] = None,
    model: Annotated[Path | None, typer.Option("--model", help="depth: a local depth-estimation folder.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="shuffle: the random flow's seed.")] = 0,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="depth: allow a pickled estimator (can run code).")
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the preprocessors and their sliders.")] = False,
) -> None:
    """Turn IMAGE into NAME's control map (sd-webui-controlnet's module names and sliders)."""
    if list_ or (name == "list" and image is None):
        _print_list()
        return
    if name is None or image is None:
        raise UserError("give a preprocessor NAME and an IMAGE (or --list)")
    from ssdxl.cli.main import check_output, open_image
    from ssdxl.control.preprocess import preprocess as make_map

    check_output(output)
    picture = open_image(image, "IMAGE")
    control = make_map(
        name,
        picture,
        resolution=resolution,
        threshold_a=threshold_a,
        threshold_b=threshold_b,
        model=model,
        seed=seed,
        allow_pickle=allow_pickle,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        control.save(output)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc}") from None
    typer.echo(f"{output}  {control.width}x{control.height}")


def _print_list() -> None:
    from ssdxl.control.preprocess import PREPROCESSORS

    for module in PREPROCESSORS:
        other = [n for n in module.names[1:] if n != module.name]
        names = module.name + (f" ({', '.join(dict.fromkeys(other))})" if other else "")
        sliders = [
            f"{flag} {s.label} {s.minimum:g}-{s.maximum:g} [{s.value:g}]"
            for flag, s in (("--a", module.slider_a), ("--b", module.slider_b))
            if s is not None
        ]
        size = "" if module.uses_resolution else "  (keeps the image size)"
        typer.echo(f"{names}\n    {module.summary}{size}" + "".join(f"\n    {s}" for s in sliders))
