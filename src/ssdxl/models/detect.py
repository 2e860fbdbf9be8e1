"""Which preset a single-file checkpoint (LDM layout for SD 1.x / 2.x, SGM for SDXL) is, from its key names.

The text towers' key prefixes name the family (``families.family_of_keys``); then, like ComfyUI's model
detection, this counts transformer blocks per UNet level and looks at the mid block: SDXL base, SSD-1B
and Vega share widths and differ only in depths and mid attention, the refiner has four levels, SD 1.x
and 2.x four levels of depth 1. Widths are never read, so tiny scaled copies of a preset are recognised
too. The expected structure of each preset is computed from its diffusers config in ``presets.json``.

What the UNet predicts is not in the key names: ``detect_prediction`` follows ComfyUI (a ``v_pred``
marker, else for SD 2.x a statistic of one weight), and users can override it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

import torch

from ssdxl.errors import UserError
from ssdxl.models.families import SD2, SD2_V, family_of_keys
from ssdxl.models.sgm import UNET_PREFIX, V_PRED_KEY

# input/output blocks are numbered containers of numbered slots; the middle block is one container
_BLOCK = re.compile(r"model\.diffusion_model\.(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.*)")
_MIDDLE = re.compile(r"model\.diffusion_model\.(middle_block)\.(\d+)\.(.*)")
_EMBEDDER = re.compile(r"(?:conditioner\.embedders\.(\d+)|cond_stage_model)\.(transformer|model)\.")
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
    """The UNet block structure of a single-file state dict, plus its text encoders.

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
            embedders[int(m.group(1) or 0)] = "clip-l" if m.group(2) == "transformer" else "openclip"
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
def _preset_structures() -> dict[str, tuple[str, dict[str, Any]]]:
    """preset name -> (family name, UNet structure), in ``presets.json`` order."""
    from ssdxl.models.presets import get_preset, preset_names

    presets = [get_preset(name) for name in preset_names()]
    return {p.name: (p.family.name, config_structure(p.unet)) for p in presets}


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
            "this is a diffusers-format state dict, not a single-file (original LDM/SGM layout) checkpoint; "
            "load the diffusers folder instead"
        )
    raise UserError(f"not a Stable Diffusion single-file checkpoint: no {UNET_PREFIX}* tensors (e.g. {keys[0]!r})")


def detect_preset(keys: Iterable[str], prediction: str = "epsilon") -> str:
    """The preset whose family (text tower keys) and UNet structure the keys have.

    ``prediction`` ("epsilon" or "v_prediction", see ``detect_prediction``) tells SD 2.x's 512 base presets from
    its 768-v ones. SD 2.0 and 2.1 have one structure; the later preset in ``presets.json`` wins (2.1, whose
    attention upcast is only safer for 2.0).
    """
    keys = list(keys)
    _require_sgm_unet(keys)
    structure = describe_structure(keys)
    family = family_of_keys(keys)
    if family is None:
        raise UserError(
            "a single-file checkpoint without a known text encoder (cond_stage_model.* or conditioner.embedders.*): "
            f"{_summary(structure)}"
        )
    if family is SD2 and prediction == "v_prediction":
        family = SD2_V
    found = {field: structure[field] for field in STRUCTURE_FIELDS}
    same_family = {name: s for name, (f, s) in _preset_structures().items() if f == family.name}
    matches = [name for name, expected in same_family.items() if expected == found]
    if matches:
        return matches[-1]
    raise UserError(
        f"a {family.label} checkpoint with an unsupported UNet layout ({_summary(structure)}); "
        f"known: {', '.join(same_family)}"
    )


# ComfyUI's SD 2.x rule (supported_models.SD20.model_type): trained v-models spread this bias wider.
SD2_V_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_MIN_STD = 0.09


def detect_prediction(state: Mapping[str, torch.Tensor]) -> str:
    """What a single file's UNet predicts, as ComfyUI decides: v where a ``v_pred`` marker is present; else, for
    SD 2.x with 4 input channels (its inpainting models are epsilon), v where the last attention's ``norm1``
    bias has a standard deviation above 0.09; else epsilon."""
    if V_PRED_KEY in state:
        return "v_prediction"
    probe, conv_in = state.get(SD2_V_PROBE), state.get(UNET_PREFIX + "input_blocks.0.0.weight")
    is_sd2 = family_of_keys(state) is SD2 and conv_in is not None and conv_in.shape[1] == 4
    if is_sd2 and probe is not None and torch.std(probe.float(), unbiased=False) > SD2_V_MIN_STD:
        return "v_prediction"
    return "epsilon"


def check_unet_structure(keys: Iterable[str], unet_config: Mapping[str, Any]) -> None:
    """Raise a UserError when a single file's UNet does not have the structure of ``unet_config``."""
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
