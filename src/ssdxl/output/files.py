"""Saving images with their parameters, and reading the parameters back from a PNG.

A PNG gets two text chunks: ``parameters`` (AUTOMATIC1111's infotext, for other tools) and
``ssdxl`` (the full request as JSON, so ``--from-png`` re-creates the image bit for bit).
JPEG and WebP are written without metadata.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from ssdxl.errors import UserError
from ssdxl.output.infotext import parse_infotext
from ssdxl.sampling.limits import parse_size
from ssdxl.sampling.request import GeneratedImage, GenerationRequest, Hires

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
REQUEST_FIELDS = {f for f in GenerationRequest.__dataclass_fields__ if f not in ("init_image", "mask_image")}


def save_image(generated: GeneratedImage, path: Path) -> Path:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"unsupported output format {path.suffix!r}; use .png, .jpg or .webp")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "PNG":
        path.write_bytes(png_bytes(generated))
    else:
        generated.image.save(path, format=fmt, quality=95)
    return path


def png_bytes(generated: GeneratedImage) -> bytes:
    """The image as a PNG carrying its infotext and its full request (what ``save_image`` writes to a .png)."""
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", generated.infotext)
    meta.add_text("ssdxl", json.dumps(generated.params))
    out = io.BytesIO()
    generated.image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue()


def output_paths(path: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``, ... for several."""
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def request_from_png(path: Path) -> tuple[GenerationRequest, dict[str, Any]]:
    """The request stored in a PNG (ssdxl's JSON, else an A1111 infotext) and the raw parameters."""
    try:
        with Image.open(path) as image:
            text = dict(image.text) if hasattr(image, "text") else {}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if "ssdxl" in text:
        params = json.loads(text["ssdxl"])
        fields = {k: v for k, v in params.items() if k in REQUEST_FIELDS}
        for key in ("original_size", "target_size", "crop_top_left"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        fields["loras"] = [(path, weight) for path, weight in fields.get("loras", [])]
        fields["outpaint"] = tuple(fields["outpaint"]) if fields.get("outpaint") else None
        fields["hires"] = Hires(**fields["hires"]) if fields.get("hires") else None
        fields.pop("controls", None)  # their maps are not in the PNG: pass --controlnet again
        fields.pop("image_prompts", None)
        return GenerationRequest(**fields), params
    if "parameters" in text:
        return _request_from_infotext(parse_infotext(text["parameters"]))
    raise UserError(f"{path} carries no generation parameters (no 'ssdxl' or 'parameters' text chunk)")


def _request_from_infotext(info: dict[str, str]) -> tuple[GenerationRequest, dict[str, Any]]:
    try:
        width, height = parse_size(info["Size"], "infotext Size") if "Size" in info else (None, None)
        request = GenerationRequest(
            prompt=info["prompt"],
            negative_prompt=info["negative_prompt"],
            width=width,
            height=height,
            steps=int(info["Steps"]) if "Steps" in info else None,
            guidance_scale=float(info["CFG scale"]) if "CFG scale" in info else None,
            scheduler=info.get("Sampler"),
            seed=int(info.get("Seed", -1)),
            strength=float(info["Denoising strength"]) if "Denoising strength" in info else None,
            clip_skip=int(info.get("Clip skip", 1)),
            guidance_rescale=float(info.get("CFG Rescale phi", 0)),
            fast_decode="Tiny VAE" in info,
        )
        if "Hires upscale" in info or "Hires resize" in info:  # txt2img + hires: the strength is the second pass's
            width, height = parse_size(info.get("Hires resize", "0x0"), "infotext Hires resize")
            request.hires = Hires(
                scale=float(info.get("Hires upscale", 2)),
                width=width or None,
                height=height or None,
                upscaler=info.get("Hires upscaler", "Latent"),
                steps=int(info["Hires steps"]) if info.get("Hires steps") else None,
                strength=request.strength if request.strength is not None else 0.7,
            )
            request.strength = None
    except ValueError as exc:
        raise UserError(f"unreadable infotext: {exc}") from None
    made_by = "ssdxl" if info.get("Version", "").startswith("ssdxl") else "other"
    kind = "inpaint" if "Mask blur" in info else request.kind
    return request, {"model": info.get("Model"), "kind": kind, "infotext_from": made_by}
