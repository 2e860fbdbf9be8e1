"""Which SDXL-family preset a single-file (SGM layout) checkpoint is, from its key names alone.

Like ComfyUI's model detection, this counts transformer blocks per UNet level and looks at the mid
block: SDXL base, SSD-1B and Vega share widths and differ only in depths and mid attention, and the
refiner has four levels. Widths are never read, so tiny scaled copies of a preset are recognised too.
The expected structure of each preset is computed from its diffusers config in ``presets.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from ssdxl.errors import UserError

UNET_PREFIX = "model.diffusion_model."
# input/output blocks are numbered containers of numbered slots; the middle block is one container
_BLOCK = re.compile(r"model\.diffusion_model\.(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.*)")
_MIDDLE = re.compile(r"model\.diffusion_model\.(middle_block)\.(\d+)\.(.*)")
_EMBEDDER = re.compile(r"conditioner\.embedders\.(\d+)\.(transformer|model)\.")
_RESNET_LEAVES = ("in_layers.", "out_layers.", "emb_layers.", "skip_connection.")
_DIFFUSERS_HINTS = (
    "down_blocks.",
    "mid_block.",
    "up_blocks.",
    "unet.",
    "text_model.",
    "encoder.down_blocks.",
)
STRUCTURE_FIELDS = ("down", "mid", "up")


def describe_structure(keys: Iterable[str]) -> dict[str, Any]:
    """The UNet block structure of an SGM state dict, plus its text encoders.

    ``down`` / ``up``: per level, the transformer depth after each resnet (0: no attention);
    ``mid``: the mid block's children in order, a depth for an attention and "resnet" for a resnet;
    ``mid_attention``; ``embedders``: "clip-l" (Hugging Face names) / "openclip" (OpenCLIP names) by index;
    ``transformer_blocks``: the total.
    """
    # blocks[group][index][slot] = ("resnet" | "attention" | "down" | "up" | "conv_in", depth)
    blocks: dict[str, dict[int, dict[int, list]]] = {
        "input_blocks": {},
        "middle_block": {},
        "output_blocks": {},
    }
    embedders: dict[int, str] = {}
    for key in keys:
        if m := _EMBEDDER.match(key):
            embedders[int(m.group(1))] = "clip-l" if m.group(2) == "transformer" else "openclip"
        if m := _BLOCK.fullmatch(key):
            group, index, slot, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        elif m := _MIDDLE.fullmatch(key):
            group, index, slot, rest = m.group(1), int(m.group(2)), 0, m.group(3)
        else:
            continue
        entry = blocks[group].setdefault(index, {}).setdefault(slot, ["?", 0])
        if rest.startswith(_RESNET_LEAVES):
            entry[0] = "resnet"
        elif rest.startswith("op."):
            entry[0] = "down"
        elif rest.startswith("conv."):
            entry[0] = "up"
        elif rest.startswith("transformer_blocks."):
            entry[0] = "attention"
            entry[1] = max(entry[1], int(rest.split(".")[1]) + 1)
        elif rest.startswith(("proj_in.", "proj_out.", "norm.")):
            entry[0] = "attention"
        elif group == "input_blocks" and index == 0:
            entry[0] = "conv_in"

    def levels(group: str, closer: str) -> list[list[int]]:
        out: list[list[int]] = [[]]
        for index in sorted(blocks[group]):
            slots = blocks[group][index]
            kinds = {kind for kind, _ in slots.values()}
            if "resnet" in kinds:
                out[-1].append(sum(depth for kind, depth in slots.values() if kind == "attention"))
            if closer in kinds:
                out.append([])
        return [level for level in out if level]

    mid: list[Any] = []
    for index in sorted(blocks["middle_block"]):
        for kind, depth in blocks["middle_block"][index].values():
            mid.append(depth if kind == "attention" else kind)
    down, up = levels("input_blocks", "down"), levels("output_blocks", "up")
    return {
        "down": down,
        "mid": mid,
        "up": up,
        "mid_attention": any(not isinstance(x, str) for x in mid),
        "embedders": [embedders[i] for i in sorted(embedders)],
        "transformer_blocks": sum(map(sum, down)) + sum(map(sum, up)) + sum(x for x in mid if not isinstance(x, str)),
    }


def config_structure(unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """``describe_structure``'s ``down`` / ``mid`` / ``up`` for a diffusers UNet2DConditionModel config.

    Follows diffusers' expansion: an int depth applies to every resnet of a level; the up path uses
    ``reverse_transformer_layers_per_block`` if given, else the reversed down depths, over layers+1 resnets;
    the mid block uses the last down depth.
    """
    down_types, up_types = unet_config["down_block_types"], unet_config["up_block_types"]
    n = len(down_types)
    per_level = unet_config.get("layers_per_block", 2)
    layers = [per_level] * n if isinstance(per_level, int) else list(per_level)
    depth = unet_config.get("transformer_layers_per_block", 1)
    depths = [depth] * n if isinstance(depth, int) else list(depth)
    reverse = unet_config.get("reverse_transformer_layers_per_block") or depths[::-1]

    def expand(entry: int | list[int], count: int, block_type: str) -> list[int]:
        if "CrossAttn" not in block_type:
            return [0] * count
        return [entry] * count if isinstance(entry, int) else list(entry)[:count]

    down = [expand(depths[i], layers[i], t) for i, t in enumerate(down_types)]
    up = [expand(reverse[i], layers[::-1][i] + 1, t) for i, t in enumerate(up_types)]
    mid_type = unet_config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type == "UNetMidBlock2DCrossAttn":
        last = depths[-1]
        mid: list[Any] = ["resnet", last if isinstance(last, int) else last[0], "resnet"]
    elif mid_type == "UNetMidBlock2D":
        mid = ["resnet"]
    else:
        mid = []
    return {"down": down, "mid": mid, "up": up}


@cache
def _preset_structures() -> dict[str, dict[str, Any]]:
    from ssdxl.models.presets import get_preset, preset_names

    return {name: config_structure(get_preset(name).unet) for name in preset_names()}


def _summary(structure: Mapping[str, Any]) -> str:
    mid = structure["mid"]
    mid_text = (
        "no mid block"
        if not mid
        else ("mid attention" if any(not isinstance(x, str) for x in mid) else "no mid attention")
    )
    return f"transformer depths down {structure['down']}, up {structure['up']}, {mid_text}"


def _require_sgm_unet(keys: list[str]) -> None:
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return
    if not keys:
        raise UserError("the checkpoint holds no tensors")
    if any(k.startswith(_DIFFUSERS_HINTS) for k in keys):
        raise UserError(
            "this is a diffusers-format state dict, not a single-file (SGM/original layout) checkpoint; "
            "load the diffusers folder instead"
        )
    raise UserError(f"not a Stable Diffusion single-file checkpoint: no {UNET_PREFIX}* tensors (e.g. {keys[0]!r})")


def detect_preset(keys: Iterable[str]) -> str:
    """The preset ("sdxl-base", "sdxl-refiner", "ssd-1b", "vega") whose UNet structure the keys have."""
    keys = list(keys)
    _require_sgm_unet(keys)
    structure = describe_structure(keys)
    found = {field: structure[field] for field in STRUCTURE_FIELDS}
    for name, expected in _preset_structures().items():
        if found == expected:
            return name
    known = ", ".join(_preset_structures())
    if "openclip" in structure["embedders"]:
        raise UserError(
            f"an SDXL-like checkpoint with an unsupported UNet layout ({_summary(structure)}); known: {known}"
        )
    hint = " (it looks like Stable Diffusion 1.x/2.x)" if any(k.startswith("cond_stage_model.") for k in keys) else ""
    raise UserError(f"not an SDXL-family checkpoint{hint}: {_summary(structure)}")


def check_unet_structure(keys: Iterable[str], unet_config: Mapping[str, Any]) -> None:
    """Raise a UserError when an SGM checkpoint's UNet does not have the structure of ``unet_config``."""
    keys = list(keys)
    _require_sgm_unet(keys)
    found = describe_structure(keys)
    expected = config_structure(unet_config)
    if any(found[f] != expected[f] for f in STRUCTURE_FIELDS):
        try:
            actual = f"it looks like {detect_preset(keys)}"
        except UserError:
            actual = _summary(found)
        raise UserError(f"the checkpoint does not match the chosen model config ({_summary(expected)}): {actual}")
