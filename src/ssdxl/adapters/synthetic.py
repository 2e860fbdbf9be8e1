"""Random adapter files in the layouts found in the wild, for any loaded model: what the tests check the
loaders with (no hub to fetch real ones from) and what the benchmarks time (speed does not depend on
the values), as ``ssdxl init-random`` is for models. Names follow the model's family: ``lora_te_`` and
``emb_params`` for SD 1.x / 2.x's one text encoder, ``lora_te1_`` / ``lora_te2_`` and ``clip_l`` / ``clip_g``
for SDXL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from ssdxl.adapters.embeddings import ONE_TOWER_KEY, embedding_keys
from ssdxl.adapters.export import architecture_metadata, kohya_key, kohya_prefixes, sgm_unet_names, wild_name

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_layers(
    components, *, text_encoders: bool = True, unet_targets: Sequence[str] = UNET_TARGETS
) -> dict[str, tuple[str, torch.nn.Module]]:
    """part-qualified module name -> (part, Linear or Conv2d) for every layer a LoRA on ``unet_targets`` (matched
    as peft matches ``target_modules``) and, with ``text_encoders``, on each text tower's attention patches."""
    found = {}
    parts = [("unet", unet_targets)] + [(tower, TE_TARGETS) for tower in components.family.towers if text_encoders]
    for part, targets in parts:
        for name, layer in getattr(components, part).named_modules():
            hit = any(name == t or name.endswith("." + t) for t in targets)
            if hit and isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                found[f"{part}.{wild_name(part, name)}"] = (part, layer)
    return found


def make_lora(
    components,
    path: Path,
    *,
    fmt: str = "diffusers",
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    scale: float = 0.3,
    text_encoders: bool = True,
    unet_targets: Sequence[str] = UNET_TARGETS,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A random LoRA for ``components``: diffusers/peft keys, or kohya-ss keys with ``alpha`` (``kohya-sgm``:
    UNet layers under their SGM names, ``input_blocks_4_1_...``, as sd-scripts writes SDXL LoRAs). Conv layers
    among ``unet_targets`` (LCM-LoRA's resnets, SD 1.x's 1x1 ``proj_in``) get 4-D weights, as peft keeps them.
    The metadata says which architecture the file is for, as sd-scripts' files do."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    prefixes = kohya_prefixes(components.family)
    sgm_names = sgm_unet_names(components) if fmt == "kohya-sgm" else None
    layers = lora_layers(components, text_encoders=text_encoders, unet_targets=unet_targets)
    for full, (part, layer) in layers.items():
        if isinstance(layer, torch.nn.Conv2d):
            down = torch.randn(rank, layer.in_channels, *layer.kernel_size, generator=generator) * scale
            up = torch.randn(layer.out_channels, rank, 1, 1, generator=generator) * scale
        else:
            down = torch.randn(rank, layer.in_features, generator=generator) * scale
            up = torch.randn(layer.out_features, rank, generator=generator) * scale
        if fmt == "diffusers":
            tensors[f"{full}.lora_A.weight"] = down
            tensors[f"{full}.lora_B.weight"] = up
        elif fmt in ("kohya", "kohya-sgm"):
            flat = kohya_key(part, full.split(".", 1)[1], prefixes, sgm_names)
            tensors[f"{flat}.lora_down.weight"] = down
            tensors[f"{flat}.lora_up.weight"] = up
            tensors[f"{flat}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
        else:
            raise ValueError(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        path,
        metadata=architecture_metadata(components.family) | (metadata or {}),
    )
    return path


def make_embedding(components, path: Path, *, vectors: int = 2, seed: int = 0, one_tower: bool = False) -> Path:
    """A textual-inversion file for ``components``' family: SDXL's clip_l + clip_g, or A1111's ``emb_params`` for
    SD 1.x / 2.x; ``one_tower`` writes ``emb_params`` of the first tower's width whatever the model (a file
    that an SDXL model must refuse)."""
    generator = torch.Generator().manual_seed(seed)
    family = components.family
    keys = {family.towers[0]: ONE_TOWER_KEY} if one_tower else embedding_keys(family)
    tensors = {
        key: torch.randn(
            vectors, getattr(components, tower).get_input_embeddings().weight.shape[1], generator=generator
        )
        for tower, key in keys.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path
