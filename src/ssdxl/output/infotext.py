"""AUTOMATIC1111's "infotext": the generation parameters as text, in a PNG's ``parameters`` chunk.

Other tools (A1111's PNG Info tab, ComfyUI, civitai) read this format, so ssdxl writes it; ssdxl
also reads it back so ``--from-png`` can re-create images made by A1111 as well as its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ssdxl.control.models import display_name

NEGATIVE = "Negative prompt: "
_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def build_infotext(params: dict[str, Any], *, model_name: str, model_hash: str, version: str) -> str:
    fields: dict[str, Any] = {
        "Steps": params["steps"],
        "Sampler": params["scheduler"],
        "CFG scale": _number(params["guidance_scale"]),
        "Seed": params["seed"],
        "Size": f"{params['width']}x{params['height']}",
        "Model hash": model_hash or None,
        "Model": model_name,
        "VAE hash": params.get("vae_hash"),
        "VAE": params.get("vae"),
        "Tiny VAE hash": params.get("tiny_vae_hash") if params.get("fast_decode") else None,
        "Tiny VAE": params.get("tiny_vae") if params.get("fast_decode") else None,  # decoded by it (--fast-decode)
    }
    if params.get("strength") is not None:
        fields["Denoising strength"] = _number(params["strength"])
    if params.get("refiner_model"):
        fields["Refiner"] = params["refiner_model"]
        fields["Refiner switch at"] = _number(params["high_noise_fraction"])
    if params.get("guidance_cutoff", 1.0) < 1.0:
        fields["CFG cutoff"] = _number(params["guidance_cutoff"])
    if params.get("guidance_rescale"):
        fields["CFG Rescale phi"] = _number(params["guidance_rescale"])  # as sd-webui-cfg-rescale records it
    if params.get("clip_skip", 1) > 1:
        fields["Clip skip"] = params["clip_skip"]
    hires = params.get("hires")
    if hires:
        fields["Denoising strength"] = _number(hires["strength"])  # a txt2img's only strength: the second pass's
        if hires.get("width") or hires.get("height"):
            fields["Hires resize"] = f"{hires.get('width') or 0}x{hires.get('height') or 0}"
        else:
            fields["Hires upscale"] = _number(hires["scale"])
        fields["Hires steps"] = hires.get("steps")
        fields["Hires upscaler"] = hires["upscaler"]
    for k, unit in enumerate(params.get("controls") or []):
        fields[f"ControlNet {k}"] = _unit_text(unit)  # as sd-webui-controlnet records a unit
    for k, prompt in enumerate(params.get("image_prompts") or []):
        fields[f"IP-Adapter {k}"] = f"Model: {Path(prompt['model']).stem}, Weight: {_number(prompt['scale'])}"
    if params.get("lora_hashes"):
        fields["Lora hashes"] = ", ".join(f"{name}: {digest}" for name, digest in params["lora_hashes"].items())
    if params.get("embedding_hashes"):
        fields["TI hashes"] = ", ".join(f"{name}: {digest}" for name, digest in params["embedding_hashes"].items())
    if params.get("styles"):  # a record only: the prompts above already hold them, so --from-png never re-applies
        fields["Styles"] = ", ".join(params["styles"])
    fields["Version"] = f"ssdxl {version}"
    line = ", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None)
    tags = [f"<lora:{Path(path).stem}:{_number(weight)}>" for path, weight in params.get("loras") or []]
    text = " ".join([params["prompt"], *tags])  # as A1111 writes it: the tags in the prompt
    if params.get("negative_prompt"):
        text += f"\n{NEGATIVE}{params['negative_prompt']}"
    return f"{text}\n{line}"


def parse_infotext(text: str) -> dict[str, Any]:
    """Prompt, negative prompt and the key/value line of an infotext, as strings."""
    lines = text.strip().split("\n")
    pairs: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        pairs = {k.strip(): v.strip().strip('"') for k, v in _PAIR.findall(lines.pop())}
    prompt_lines, negative_lines = [], []
    target = prompt_lines
    for line in lines:
        if line.startswith(NEGATIVE):
            target = negative_lines
            line = line[len(NEGATIVE) :]
        target.append(line)
    return {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines), **pairs}


RESIZE_NAMES = {"resize": "Just Resize", "crop": "Crop and Resize", "fill": "Resize and Fill"}


def _unit_text(unit: dict[str, Any]) -> str:
    parts = {
        "Module": unit["preprocessor"],
        "Model": display_name(unit["model"]),
        "Weight": _number(unit["scale"]),
        "Resize Mode": RESIZE_NAMES.get(unit["resize_mode"], unit["resize_mode"]),
        "Processor Res": unit.get("processor_res"),
        "Threshold A": unit.get("threshold_a"),
        "Threshold B": unit.get("threshold_b"),
        "Guidance Start": _number(unit["start"]),
        "Guidance End": _number(unit["end"]),
        "Control Mode": "ControlNet is more important" if unit["guess_mode"] else "Balanced",
        "Control Type": unit.get("control_type"),
    }
    return ", ".join(f"{k}: {v}" for k, v in parts.items() if v is not None)


def _number(value: float) -> str:
    return f"{value:g}"


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',:"\n') else text
