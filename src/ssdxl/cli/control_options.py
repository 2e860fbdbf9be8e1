"""``ssdxl generate``'s control and image-tool options as request fields: ControlNet units, IP-Adapter
image prompts, outpainting and hires fix.

A unit is ``--controlnet MODEL[:IMAGE][:SCALE][:key=value...]`` (keys: any ``ControlUnit`` field, e.g.
``preprocessor=canny``, ``start=0.1``, ``end=0.8``, ``guess_mode=1``, ``control_type=depth``); what a
unit leaves out comes from ``--control-image``, ``--control-scale``, ``--control-preprocessor`` and the
other ``--control-*`` options, so one unit needs no colon syntax at all.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from PIL import Image

from ssdxl.adapters.library import split_weight
from ssdxl.errors import UserError
from ssdxl.sampling.request import ControlUnit, Hires, ImagePrompt

BOOL_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
UNIT_FIELDS = {f.name: f.type for f in dataclasses.fields(ControlUnit) if f.name not in ("model", "image")}


def open_picture(path: Path | str, option: str) -> Image.Image:
    try:
        with Image.open(Path(path).expanduser()) as image:
            image.load()
            return image
    except (OSError, ValueError) as exc:
        raise UserError(f"{option}: {path} is not a readable image ({exc})") from None


def control_units(specs: list[str], defaults: dict[str, Any]) -> list[ControlUnit]:
    """The units ``--controlnet`` names, each filled in from the ``--control-*`` defaults."""
    units = []
    for spec in specs:
        model, *parts = spec.split(":")
        fields: dict[str, Any] = {}
        for part in parts:
            if "=" in part:
                key, _, value = part.partition("=")
                fields[_field(key.strip(), spec)] = _value(key.strip(), value.strip(), spec)
            elif part:
                try:
                    fields["scale"] = float(part)
                except ValueError:
                    fields["image"] = part
        image = fields.pop("image", defaults.get("image"))
        if image is None:
            raise UserError(f"--controlnet {spec}: no control image (MODEL:IMAGE, or --control-image)")
        settings = {k: v for k, v in defaults.items() if k != "image" and v is not None} | fields
        units.append(ControlUnit(model, open_picture(image, "--controlnet"), **settings))
    return units


def image_prompts(adapters: list[str], images: list[Path], scale: float) -> list[ImagePrompt]:
    """``--ip-adapter MODEL[:SCALE]`` (repeatable) with the ``--image-prompt`` pictures (shared by all)."""
    if adapters and not images:
        raise UserError("--ip-adapter needs at least one --image-prompt picture")
    if images and not adapters:
        raise UserError("--image-prompt needs an --ip-adapter to read it")
    pictures = [open_picture(path, "--image-prompt") for path in images]
    prompts = []
    for spec in adapters:
        model, weight = split_weight(spec, scale)
        prompts.append(ImagePrompt(model, pictures, weight))
    return prompts


def hires(spec: str | None, *, steps: int | None, strength: float, upscaler: str) -> Hires | None:
    """``--hires 2x`` (scale) or ``--hires 1536x1024`` (size)."""
    if spec is None:
        return None
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)x?", spec.strip()):
        return Hires(scale=float(match.group(1)), upscaler=upscaler, steps=steps, strength=strength)
    if match := re.fullmatch(r"(\d+)x(\d+)", spec.strip()):
        width, height = int(match.group(1)), int(match.group(2))
        return Hires(width=width, height=height, upscaler=upscaler, steps=steps, strength=strength)
    raise UserError(f"--hires takes a scale (2x, 1.5) or a size (1536x1024); got {spec!r}")


def _field(key: str, spec: str) -> str:
    if key not in UNIT_FIELDS and key != "image":
        raise UserError(f"--controlnet {spec}: unknown setting {key!r}; known: image, {', '.join(UNIT_FIELDS)}")
    return key


def _value(key: str, value: str, spec: str) -> Any:
    kind = str(UNIT_FIELDS.get(key, "str"))
    try:
        if "bool" in kind:
            return BOOL_WORDS[value.lower()]
        if "float" in kind:
            return float(value)
        if "int" in kind:
            return int(value)
    except (KeyError, ValueError):
        raise UserError(f"--controlnet {spec}: {key}={value!r} is not a valid {kind.split(' ')[0]}") from None
    return value
