"""AUTOMATIC1111's "infotext": the generation parameters as text, in a PNG's ``parameters`` chunk.

Other tools (A1111's PNG Info tab, ComfyUI, civitai) read this format, so ssdxl writes it; ssdxl
also reads it back so ``--from-png`` can re-create images made by A1111 as well as its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
    }
    if params.get("strength") is not None:
        fields["Denoising strength"] = _number(params["strength"])
    if params.get("refiner_model"):
        fields["Refiner"] = params["refiner_model"]
        fields["Refiner switch at"] = _number(params["high_noise_fraction"])
    if params.get("guidance_cutoff", 1.0) < 1.0:
        fields["CFG cutoff"] = _number(params["guidance_cutoff"])
    if params.get("lora_hashes"):
        fields["Lora hashes"] = ", ".join(f"{name}: {digest}" for name, digest in params["lora_hashes"].items())
    if params.get("embedding_hashes"):
        fields["TI hashes"] = ", ".join(f"{name}: {digest}" for name, digest in params["embedding_hashes"].items())
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


def _number(value: float) -> str:
    return f"{value:g}"


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if any(c in text for c in ',:"\n') else text
