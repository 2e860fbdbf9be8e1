"""Architecture presets of the SDXL family and of SD 1.x / 2.x, kept as data in ``configs/presets.json``.

A preset is a set of diffusers component configs (UNet, VAE, one or two CLIP text towers,
scheduler) plus pipeline flags and generation defaults; its ``family`` (``ssdxl.models.families``)
follows from the configs. ``scaled(preset, "tiny")`` shrinks the
widths while keeping every structural choice (block types, transformer depths, mid block), so a
tiny copy exercises exactly the code paths of the full model.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ssdxl.errors import UserError
from ssdxl.models.families import Family, family_of

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
SCALES = ("full", "tiny")


@dataclass(frozen=True)
class Preset:
    """One architecture: component configs (plain dicts, as in a diffusers folder) and defaults."""

    name: str
    description: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any] | None
    text_encoder_2: dict[str, Any] | None
    scheduler: dict[str, Any]
    pipeline: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> Family:
        return family_of(self.unet, self.text_encoder, self.scheduler)

    @property
    def is_refiner(self) -> bool:
        return self.family.is_refiner

    def component(self, name: str) -> dict[str, Any] | None:
        return getattr(self, name)


@cache
def _raw() -> dict[str, Any]:
    text = resources.files("ssdxl.models").joinpath("configs/presets.json").read_text()
    return json.loads(text)


def _resolve(slot: Any, shared: dict[str, Any]) -> dict[str, Any] | None:
    """A slot is null, a shared entry's name, an inline dict, or a list of those merged in order (shared
    entries may be lists too)."""
    if slot is None:
        return None
    if isinstance(slot, str):
        return _resolve(shared[slot], shared)
    if isinstance(slot, list):
        merged: dict[str, Any] = {}
        for part in slot:
            merged.update(_resolve(part, shared) or {})
        return merged
    return copy.deepcopy(slot)


def preset_names() -> list[str]:
    return list(_raw()["presets"])


def get_preset(name: str, scale: str = "full") -> Preset:
    raw = _raw()
    if name not in raw["presets"]:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    entry = raw["presets"][name]
    shared = raw["shared"]
    preset = Preset(
        name=name,
        description=entry["description"],
        pipeline=dict(entry.get("pipeline", {})),
        defaults=dict(entry.get("defaults", {})),
        **{c: _resolve(entry[c], shared) for c in COMPONENTS},
    )
    return preset if scale == "full" else scaled_tiny(preset)


# Tiny copies: every width divided so group norms (32 groups) still divide the channels, heads of
# width 32, CLIP towers of 2 layers, and 64x64 pixels by default. Depths and block types are kept
# (SD 1.x keeps its single attention-head count, as its full config has one).
TINY_UNET_BASE_WIDTH = 32
TINY_TE1 = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2}
TINY_TE2 = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2}
TINY_TIME_EMBED_DIM = 8
TINY_PIXELS = 64


def scaled_tiny(preset: Preset) -> Preset:
    """The same structure at toy widths, for tests and fast experiments."""
    te1 = None if preset.text_encoder is None else {**preset.text_encoder, **TINY_TE1, "projection_dim": 32}
    te2 = None if preset.text_encoder_2 is None else {**preset.text_encoder_2, **TINY_TE2, "projection_dim": 64}

    unet = dict(preset.unet)
    widths = unet["block_out_channels"]
    unit = widths[0]
    unet["block_out_channels"] = [TINY_UNET_BASE_WIDTH * w // unit for w in widths]
    heads = [w // 32 for w in unet["block_out_channels"]]
    unet["attention_head_dim"] = heads if isinstance(unet["attention_head_dim"], list) else heads[0]
    unet["cross_attention_dim"] = sum(t["hidden_size"] for t in (te1, te2) if t is not None)
    if preset.family.time_ids:
        unet["addition_time_embed_dim"] = TINY_TIME_EMBED_DIM
        pooled = te2["projection_dim"]
        unet["projection_class_embeddings_input_dim"] = pooled + preset.family.time_ids * TINY_TIME_EMBED_DIM

    vae = dict(preset.vae)
    vae["block_out_channels"] = [32, 32, 64, 64][: len(vae["block_out_channels"])]
    vae["layers_per_block"] = 1
    vae["sample_size"] = TINY_PIXELS
    downsample = 2 ** (len(vae["block_out_channels"]) - 1)
    unet["sample_size"] = TINY_PIXELS // downsample

    defaults = {**preset.defaults, "width": TINY_PIXELS, "height": TINY_PIXELS, "steps": 4}
    return Preset(
        name=preset.name,
        description=f"{preset.description} [tiny]",
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        scheduler=dict(preset.scheduler),
        pipeline=dict(preset.pipeline),
        defaults=defaults,
    )


def unet_stats(config: dict[str, Any]) -> tuple[int, int]:
    """(parameters, transformer blocks) of a UNet built on the meta device: no memory, no init time."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    params = sum(p.numel() for p in unet.parameters())
    blocks = sum(isinstance(m, BasicTransformerBlock) for m in unet.modules())
    return params, blocks
