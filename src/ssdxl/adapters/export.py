"""Writing adapter files: what fine-tuning and LCM distillation hand over, in the layouts the loaders read.

A LoRA is written in diffusers' peft layout (``unet.<module>.lora_A.weight``: what
``load_lora_weights`` reads) or kohya-ss's (``lora_unet_<module>.lora_down.weight`` + ``alpha``: what
sd-scripts writes and A1111 / ComfyUI read): SGM block names and ``lora_te1_`` / ``lora_te2_`` for SDXL,
diffusers block names and ``lora_te_`` for the one text encoder of SD 1.x / 2.x. An embedding is SDXL's
two-tower ``{"clip_l", "clip_g"}`` file or A1111's one-tower ``emb_params`` (``embedding_keys`` says which;
``load_textual_inversion`` per tower, A1111, ComfyUI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ssdxl.models.families import Family

LORA_FORMATS = ("diffusers", "kohya")
ONE_TOWER_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te"}
SDXL_PREFIXES = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def kohya_prefixes(family: Family) -> dict[str, str]:
    """kohya-ss's key prefix per part: ``lora_te`` for SD 1.x / 2.x's one text encoder, ``lora_te1`` / ``lora_te2``
    for SDXL's (the refiner's one tower is SDXL's second)."""
    return ONE_TOWER_PREFIXES if family.towers == ("text_encoder",) else SDXL_PREFIXES


def architecture_metadata(family: Family) -> dict[str, str]:
    """The metadata entry that says which architecture a LoRA was made for (``ssdxl loras`` lists it, and a model
    of another family refuses the file by name even where its widths tell nothing)."""
    return {"modelspec.architecture": f"{family.modelspec}/lora"}


def sgm_unet_names(components) -> dict[str, str]:
    """diffusers UNet module name -> SGM module name, read off ssdxl's single-file converter (a rename keeps
    the tensor object, so the two names of one weight are found by identity)."""
    from ssdxl.models.sgm import UNET_PREFIX, sgm_from_components

    state = {name: _base_state(module) for name, module in components.modules().items()}
    by_tensor = {id(t): key for key, t in sgm_from_components(state).items() if key.startswith(UNET_PREFIX)}
    names = {}
    for key, tensor in state["unet"].items():
        if key.endswith(".weight") and id(tensor) in by_tensor:
            names[key.removesuffix(".weight")] = by_tensor[id(tensor)].removeprefix(UNET_PREFIX).removesuffix(".weight")
    return names


def _base_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's own weights under their own names, with any peft LoRA layers on it left out."""
    state = module.state_dict()
    return {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}


def wild_name(part: str, module: str) -> str:
    """``module`` of ``part`` as LoRA files in the wild name it: CLIP layers under ``text_model.``."""
    return module if part == "unet" or module.startswith("text_model.") else "text_model." + module


def kohya_key(part: str, module: str, prefixes: dict[str, str], sgm_names: dict[str, str] | None = None) -> str:
    """The kohya-ss name of LoRA'd ``module`` of ``part`` under ``prefixes`` (``kohya_prefixes``): SGM block names
    for the UNet where ``sgm_names`` is given (as sd-scripts writes SDXL LoRAs), ``text_model.`` names for the CLIP
    towers."""
    if part == "unet" and sgm_names is not None:
        module = sgm_names[module]
    return prefixes[part] + "_" + wild_name(part, module).replace(".", "_")


LoraPair = tuple[torch.Tensor, torch.Tensor, float]


def lora_pairs(module: torch.nn.Module, adapter: str = "default") -> dict[str, LoraPair]:
    """module name -> (down [r, in(, k, k)], up [out, r(, 1, 1)], scale alpha/r) for every peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            down = layer.lora_A[adapter].weight.detach().float()
            up = layer.lora_B[adapter].weight.detach().float()
            found[name] = (down, up, float(layer.scaling[adapter]))  # conv LoRAs keep their 4-D shapes
    return found


def save_lora(
    parts,
    path: Path,
    *,
    fmt: str = "diffusers",
    adapter: str = "default",
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the peft adapter ``adapter`` that is on ``parts``' UNet / text towers as one LoRA file.

    diffusers layout: alpha/r is folded into ``lora_B`` (every loader then reads scale 1). kohya layout:
    the weights as trained, with ``alpha`` per layer (scale = alpha / rank, as kohya-ss defines it), under the
    names sd-scripts gives the model's family.
    """
    if fmt not in LORA_FORMATS:
        raise ValueError(f"LoRA format must be one of {LORA_FORMATS}, got {fmt!r}")
    tensors: dict[str, torch.Tensor] = {}
    family = parts.family
    prefixes = kohya_prefixes(family)
    sgm_names = sgm_unet_names(parts) if fmt == "kohya" and family.is_sdxl else None
    for part in ("unet", *family.towers):
        for name, (down, up, scale) in lora_pairs(getattr(parts, part), adapter).items():
            if fmt == "diffusers":
                key = f"{part}.{wild_name(part, name)}"
                tensors[f"{key}.lora_A.weight"] = down
                tensors[f"{key}.lora_B.weight"] = up * scale
            else:
                key = kohya_key(part, name, prefixes, sgm_names)
                tensors[f"{key}.lora_down.weight"] = down
                tensors[f"{key}.lora_up.weight"] = up
                tensors[f"{key}.alpha"] = torch.tensor(scale * down.shape[0])
    if not tensors:
        raise ValueError(f"no LoRA layers of adapter {adapter!r} on this model")
    return _write(tensors, path, metadata, dtype)


def save_embedding(
    vectors: dict[str, torch.Tensor],
    path: Path,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A textual-inversion file: ``vectors`` under the keys ``embedding_keys`` gives the model (SDXL's ``clip_l``
    [n, 768-ish] and ``clip_g`` [n, 1280-ish], or one tower's ``emb_params``)."""
    return _write(vectors, path, metadata, dtype)


def _write(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None, dtype: torch.dtype) -> Path:
    """Write atomically (a crash mid-write leaves the previous file), in ``dtype``, with string-only metadata,
    readable as any new file of the user's is (safetensors itself creates files owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().to(dtype).contiguous() for k, v in tensors.items()}, tmp, metadata=meta or None)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    tmp.replace(path)
    return path
