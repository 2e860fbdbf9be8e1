"""One guided UNet call per backend, for the model-size and resolution comparisons where a whole
pipeline (text towers, VAE, a float32 copy) would cost memory and minutes for nothing: the UNet is
built straight in bfloat16 with random weights (speed does not depend on their values)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ssdxl.models.families import time_ids_of, unet_inputs
from ssdxl.models.presets import get_preset
from ssdxl.speed import openvino_backend
from ssdxl.speed.flops import unet_flops
from ssdxl.speed.timing import Mark, summary

BACKENDS = ("torch-bf16", "torch-bf16-tuned", "openvino-bf16")
CLASSIC_ATTENTION = "torch-bf16-tuned-classic-attention"  # diffusers' AttnProcessor instead of SDPA


def build_unet(preset: str, scale: str = "full", dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(get_preset(preset, scale).unet)
    finally:
        torch.set_default_dtype(previous)
    return unet.eval().requires_grad_(False)


def time_unet(
    preset: str,
    sizes: tuple[int, ...],
    backends: tuple[str, ...] = BACKENDS,
    repeats: int = 2,
    scale: str = "full",
    log=print,
) -> list[dict[str, Any]]:
    """Per size (square, pixels): median wall and CPU seconds of one guided call (batch 2) per backend,
    after a warm-up call (allocations; OpenVINO compiles for the shape there)."""
    unet = build_unet(preset, scale)
    config = unet.config
    results = [{"preset": preset, "size": size, "flops": unet_flops(dict(config), size, size)} for size in sizes]
    for backend in backends:
        if backend == "openvino-bf16" and not openvino_backend.available():
            for result in results:
                result[backend] = {"unavailable": "openvino is not installed"}
            continue
        call = _caller(unet, backend)
        for result in results:
            args, kwargs = _inputs(config, result["size"])
            call(*args, **kwargs)
            walls, cpus = [], []
            for _ in range(repeats):
                start = Mark.now()
                call(*args, **kwargs)
                took = Mark.now().since(start)
                walls.append(took.wall)
                cpus.append(took.cpu)
            result[backend] = {"wall": summary(walls), "cpu": summary(cpus), "load": list(os.getloadavg())}
            median = result[backend]["wall"]["median"]
            log(f"{preset} {result['size']}px {backend}: {median:.2f} s, load {os.getloadavg()[0]:.1f}")
        del call
    return results


def _inputs(config: Any, size: int) -> tuple[tuple, dict[str, Any]]:
    """A guided call's inputs in bfloat16 (random, the time ids a square image's sizes)."""
    n = size // 8

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, dtype=torch.bfloat16)

    cond = unet_inputs(config, time_ids_of(config), 2, n, n, rand)
    if cond["added_cond_kwargs"]:
        cond["added_cond_kwargs"]["time_ids"] = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.bfloat16)
    return (cond.pop("sample"), torch.tensor(500.0)), cond


def _caller(unet: torch.nn.Module, backend: str):
    if backend == "openvino-bf16":
        model = openvino_backend.convert_unet(unet)
        return openvino_backend.OpenVINOUNet(model, unet.config, torch.bfloat16, "bf16")
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    tuned = backend in ("torch-bf16-tuned", CLASSIC_ATTENTION)
    unet.to(memory_format=torch.channels_last if tuned else torch.contiguous_format)
    unet.set_attn_processor(AttnProcessor() if backend == CLASSIC_ATTENTION else AttnProcessor2_0())

    def call(*args, **kwargs):
        with torch.inference_mode():
            return unet(*args, **kwargs)

    return call
