"""Random IP-Adapter files in h94's layout with a tiny CLIP image encoder beside them, for any loaded UNet: what
the tests check the loader against stock diffusers with (no hub to fetch real ones from) and what benchmarks
time (speed does not depend on the values)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ssdxl.control.ip_adapter import cross_attention_layers

# one tiny encoder per folder, shared by every adapter written there as h94's folders share one
ENCODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 24,  # unlike hidden_size, so a plain adapter reading hidden states would fail
}
ENCODER_SEED = 1234
PLUS_TOKENS = 16  # h94's plus adapters use 16 queries
PLUS_WIDTH = 64  # the resampler's width; diffusers reads its heads as width // 64
PLUS_DEPTH = 4  # diffusers' converter knows four resampler blocks


def random_ip_adapter(unet: torch.nn.Module, folder: Path, *, plus: bool = False, seed: int = 0) -> Path:
    """``folder/ip-adapter[-plus]-random.safetensors`` fitting ``unet`` (plain: a linear projection of the pooled
    embedding to 4 tokens; plus: a resampler over the hidden states) and ``folder/image_encoder/``."""
    folder = Path(folder)
    write_image_encoder(folder / "image_encoder")
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    shapes = _plus_shapes(cross) if plus else _plain_shapes(cross)
    tensors = {f"image_proj.{key}": _random(key, shape, generator) for key, shape in shapes.items()}
    for i, (_, width) in enumerate(cross_attention_layers(unet)):
        for kind in ("to_k_ip", "to_v_ip"):
            key = f"{2 * i + 1}.{kind}.weight"
            tensors[f"ip_adapter.{key}"] = _random(key, (width, cross), generator)
    path = folder / f"ip-adapter{'-plus' if plus else ''}-random.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return path


def write_image_encoder(folder: Path) -> Path:
    """A tiny seeded ``CLIPVisionModelWithProjection`` and its ``CLIPImageProcessor``, saved as safetensors."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.random.fork_rng(devices=[]):  # the same encoder every time, the caller's RNG untouched
        torch.manual_seed(ENCODER_SEED)
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    size = ENCODER["image_size"]
    CLIPImageProcessor(size=size, crop_size=size).save_pretrained(folder)
    return folder


def _plain_shapes(cross: int) -> dict[str, tuple[int, ...]]:
    tokens = 4
    return {
        "proj.weight": (tokens * cross, ENCODER["projection_dim"]),
        "proj.bias": (tokens * cross,),
        "norm.weight": (cross,),
        "norm.bias": (cross,),
    }


def _plus_shapes(cross: int) -> dict[str, tuple[int, ...]]:
    width, heads_width = PLUS_WIDTH, 64
    shapes: dict[str, tuple[int, ...]] = {
        "latents": (1, PLUS_TOKENS, width),
        "proj_in.weight": (width, ENCODER["hidden_size"]),
        "proj_in.bias": (width,),
        "proj_out.weight": (cross, width),
        "proj_out.bias": (cross,),
        "norm_out.weight": (cross,),
        "norm_out.bias": (cross,),
    }
    for i in range(PLUS_DEPTH):
        block = f"layers.{i}"
        for norm in (f"{block}.0.norm1", f"{block}.0.norm2", f"{block}.1.0"):
            shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (width,)
        shapes[f"{block}.0.to_q.weight"] = (heads_width, width)
        shapes[f"{block}.0.to_kv.weight"] = (2 * heads_width, width)
        shapes[f"{block}.0.to_out.weight"] = (width, heads_width)
        shapes[f"{block}.1.1.weight"] = (4 * width, width)
        shapes[f"{block}.1.3.weight"] = (width, 4 * width)
    return shapes


def _random(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Values of a trained network's scale: unit-ish LayerNorm gains, small biases, fan-in scaled matrices."""
    noise = torch.randn(shape, generator=generator)
    if len(shape) == 1:
        is_gain = key.endswith(".weight")  # the only 1-D weights here are LayerNorm gains
        return 1.0 + 0.1 * noise if is_gain else 0.1 * noise
    return noise / shape[-1] ** 0.5
