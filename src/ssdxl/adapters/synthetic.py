"""Random adapter files in the layouts found in the wild, for any loaded model: what the tests check the
loaders with (no hub to fetch real ones from) and what the benchmarks time (speed does not depend on
the values), as ``ssdxl init-random`` is for models."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ssdxl.adapters.export import kohya_key, sgm_unet_names, wild_name

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_layers(components, *, text_encoders: bool = True) -> dict[str, tuple[str, torch.nn.Linear]]:
    """part-qualified module name -> (part, Linear) for every layer a typical SDXL LoRA patches."""
    found = {}
    parts = [("unet", components.unet, UNET_TARGETS)]
    if text_encoders:
        parts += [("text_encoder", components.text_encoder, TE_TARGETS)]
        parts += [("text_encoder_2", components.text_encoder_2, TE_TARGETS)]
    for part, module, targets in parts:
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets):
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
    metadata: dict[str, str] | None = None,
) -> Path:
    """A random LoRA for ``components``: diffusers/peft keys, or kohya-ss keys with ``alpha`` (``kohya-sgm``:
    UNet layers under their SGM names, ``input_blocks_4_1_...``, as sd-scripts writes SDXL LoRAs)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    sgm_names = sgm_unet_names(components) if fmt == "kohya-sgm" else None
    for full, (part, layer) in lora_layers(components, text_encoders=text_encoders).items():
        down = torch.randn(rank, layer.in_features, generator=generator) * scale
        up = torch.randn(layer.out_features, rank, generator=generator) * scale
        if fmt == "diffusers":
            tensors[f"{full}.lora_A.weight"] = down
            tensors[f"{full}.lora_B.weight"] = up
        elif fmt in ("kohya", "kohya-sgm"):
            flat = kohya_key(part, full.split(".", 1)[1], sgm_names)
            tensors[f"{flat}.lora_down.weight"] = down
            tensors[f"{flat}.lora_up.weight"] = up
            tensors[f"{flat}.alpha"] = torch.tensor(float(alpha if alpha is not None else rank))
        else:
            raise ValueError(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path


def make_embedding(components, path: Path, *, vectors: int = 2, seed: int = 0, one_tower: bool = False) -> Path:
    """A textual-inversion file: SDXL's clip_l + clip_g, or an SD-1-style ``emb_params``."""
    generator = torch.Generator().manual_seed(seed)
    width_l = components.text_encoder.get_input_embeddings().weight.shape[1]
    width_g = components.text_encoder_2.get_input_embeddings().weight.shape[1]
    if one_tower:
        tensors = {"emb_params": torch.randn(vectors, width_l, generator=generator)}
    else:
        tensors = {
            "clip_l": torch.randn(vectors, width_l, generator=generator),
            "clip_g": torch.randn(vectors, width_g, generator=generator),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path
