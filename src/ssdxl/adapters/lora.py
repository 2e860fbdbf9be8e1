"""LoRA files: what a file is (format, rank, what it patches, whether it is an LCM-LoRA) and its weights.

Loading is diffusers' job (``ssdxl.adapters.patching`` calls the loader mixin of the model's pipeline, which
reads the diffusers/peft layout and converts kohya-ss files: ``lora_unet_*``, ``lora_te_*`` (SD 1.x / 2.x),
``lora_te1_*``, ``lora_te2_*`` (SDXL) with ``alpha``, diffusers or SGM block names). This module adds what a
user needs before that: a one-line error for a file it cannot use, the pickle refusal models have, the
architecture a file was made for (so a LoRA for another family is refused by name), and the facts ``ssdxl
loras`` lists, read from the header alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssdxl.errors import UserError, first_line
from ssdxl.models.families import Family
from ssdxl.models.loading import PICKLE_HINT, PICKLE_SUFFIXES, file_hash

LORA_SUFFIXES = (".safetensors", *sorted(PICKLE_SUFFIXES))
# names users and hubs give few-step LoRAs: lcm-lora-sdxl, lcm-lora-ssd-1b, Segmind's VegaRT, TCD
_FEW_STEP_NAME = re.compile(r"(^|[^a-z])(lcm|vegart|tcd)([^a-z]|$)", re.IGNORECASE)
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_LYCORIS_MARKERS = {"hada_w1_a": "LyCORIS LoHa", "lokr_w1": "LyCORIS LoKr", "lokr_w1_a": "LyCORIS LoKr"}
_DOWN_SUFFIXES = ("lora_down.weight", "lora_A.weight", ".down.weight")
_CROSS_ATTENTION_KV = re.compile(r"attn2[._](processor[._])?to_[kv][._]")
# The width of the text conditioning each architecture's UNet reads (cross-attention keys / values).
CONDITIONING_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}
# What kohya-ss (``ss_base_model_version``) and Stability's model spec (``modelspec.architecture``) write.
_DECLARED = (
    ("stable-diffusion-xl-v1-refiner", "SDXL refiner"),
    ("stable-diffusion-xl", "SDXL"),
    ("stable-diffusion-v2", "SD 2.x"),
    ("stable-diffusion-v1", "SD 1.x"),
    ("sdxl", "SDXL"),
    ("sd_v2", "SD 2.x"),
    ("sd_v1", "SD 1.x"),
)


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file is, from its header: enough to list it and to pick defaults."""

    path: Path
    name: str  # the file stem: what ``<lora:name:w>`` calls it
    hash: str  # AUTOMATIC1111's short hash of the file
    format: str  # diffusers, kohya, LyCORIS LoHa, ...
    rank: int | None
    parts: tuple[str, ...]  # which of unet, text_encoder, text_encoder_2 it patches
    base_model: str | None  # what its metadata says it was trained for
    few_step: str | None  # "LCM" or "TCD" for few-step LoRAs, else None
    architecture: str | None  # what it was made for ("SD 1.x", "SDXL", ...: a Family.architecture), if known

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "hash": self.hash,
            "format": self.format,
            "rank": self.rank,
            "parts": list(self.parts),
            "base_model": self.base_model,
            "few_step": self.few_step,
            "architecture": self.architecture,
        }

    def check_family(self, family: Family) -> None:
        """A one-line UserError naming both when this LoRA was made for another architecture than ``family``'s."""
        model = family.architecture
        if self.architecture not in (None, model):
            raise UserError(f"LoRA {self.name} was made for {self.architecture}; this model is {model}")


def inspect_lora(path: Path, *, allow_pickle: bool = False) -> LoraInfo:
    """The facts about ``path`` that its keys and metadata tell, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"LoRA {str(path)!r} not found")
    if path.suffix.lower() != ".safetensors":
        if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
            raise UserError(f"LoRA {path.name}: {PICKLE_HINT}")
        if path.suffix.lower() not in PICKLE_SUFFIXES:
            raise UserError(f"LoRA {path.name}: not a .safetensors file")
        shapes, metadata = _pickle_shapes(path)
    else:
        shapes, metadata = _safetensors_shapes(path)
    fmt = _format(shapes)
    if fmt.startswith("LyCORIS"):
        raise UserError(f"LoRA {path.name}: {fmt} files are not supported: diffusers converts only LoRA (lora_down/up)")
    return LoraInfo(
        path=path,
        name=path.stem,
        hash=file_hash(path),
        format=fmt,
        rank=_rank(shapes),
        parts=_parts(shapes),
        base_model=metadata.get("ssdxl.base_model") or metadata.get("ss_base_model_version")
        or metadata.get("modelspec.architecture"),
        few_step=_few_step(path, metadata),
        architecture=_architecture(shapes, metadata),
    )


def _safetensors_shapes(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Tensor shapes and metadata from a safetensors header (the 8-byte length, then JSON)."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 2 <= length <= 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        raise UserError(f"LoRA {path.name}: not a readable safetensors file ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    return {k: v.get("shape", []) for k, v in header.items() if isinstance(v, dict)}, metadata


def _pickle_shapes(path: Path) -> tuple[dict[str, list[int]], dict[str, str]]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"LoRA {path.name}: cannot read it ({first_line(exc)})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k: list(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}, {}


def _format(shapes: dict[str, list[int]]) -> str:
    for marker, name in _LYCORIS_MARKERS.items():
        if any(key.split(".")[-2:-1] == [marker] or f".{marker}" in key for key in shapes):
            return name
    if any(key.startswith(_KOHYA_PREFIXES) for key in shapes):
        return "kohya"
    if any(".lora_A." in key or ".lora.down." in key or ".lora_linear_layer." in key for key in shapes):
        return "diffusers"
    raise UserError("not a LoRA file: no LoRA weights (lora_A/lora_down/...) in it")


def _rank(shapes: dict[str, list[int]]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith(_DOWN_SUFFIXES) and shape:
            return int(shape[0])
    return None


def _architecture(shapes: dict[str, list[int]], metadata: dict[str, str]) -> str | None:
    """What a LoRA was made for: the width of the text its cross-attention keys read, else SDXL's second text
    tower among its parts, else what its metadata declares; None when nothing tells (models of other widths)."""
    widths = {
        shape[1] for key, shape in shapes.items() if _CROSS_ATTENTION_KV.search(key) and key.endswith(_DOWN_SUFFIXES)
    }
    if len(widths) == 1 and widths <= CONDITIONING_WIDTHS.keys():
        return CONDITIONING_WIDTHS[widths.pop()]
    if "text_encoder_2" in _parts(shapes):
        return "SDXL"
    declared = (metadata.get("modelspec.architecture") or metadata.get("ss_base_model_version") or "").lower()
    return next((arch for prefix, arch in _DECLARED if declared.startswith(prefix)), None)


def _parts(shapes: dict[str, list[int]]) -> tuple[str, ...]:
    found = set()
    for key in shapes:
        if key.startswith(("lora_unet_", "unet.")) or not key.startswith(("lora_te", "text_encoder")):
            found.add("unet")
        elif key.startswith(("lora_te2_", "text_encoder_2.")):
            found.add("text_encoder_2")
        else:
            found.add("text_encoder")
    return tuple(p for p in ("unet", "text_encoder", "text_encoder_2") if p in found)


def _few_step(path: Path, metadata: dict[str, str]) -> str | None:
    """LCM or TCD for few-step LoRAs: by ssdxl's metadata entry, else by the names the files are published under."""
    declared = metadata.get("ssdxl.few_step")
    if declared:
        return declared.upper()
    match = _FEW_STEP_NAME.search(path.stem)
    if match is None:
        return None
    return "TCD" if match.group(2).lower() == "tcd" else "LCM"
