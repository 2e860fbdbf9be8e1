"""Device and dtype policy: the fastest precision that gives correct images on each device.

CUDA runs float16 (its VAE decode is upcast to float32 when the VAE overflows in float16, as the
original SDXL VAE does). CPUs with AMX or AVX512-BF16 run bfloat16, which those units compute
several times faster than float32; other CPUs run float32.
"""

from __future__ import annotations

import gc
from functools import cache

import torch

from ssdxl.errors import UserError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use auto, float32, float16 or bfloat16")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def release_memory() -> None:
    """Hand the memory of models just let go back before the next one loads: collect the reference cycles that
    keep their tensors, and return CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
