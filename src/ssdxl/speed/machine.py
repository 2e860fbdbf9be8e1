"""What a benchmark ran on, and how fast its matrix units are: the floor a result is measured against.

A UNet step cannot beat its FLOPs divided by the machine's measured matmul rate, so every timing is
reported with that ratio; the description (CPU model, cores, AMX/AVX512-BF16, load average) is
what makes numbers from a shared machine comparable at all.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib import metadata

import torch

from ssdxl.sampling.precision import cpu_flags

SPEED_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")
PACKAGES = ("torch", "diffusers", "transformers", "openvino", "nncf", "optimum-intel")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe() -> dict:
    """The machine and software a result belongs to (JSON-ready)."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "speed_flags": [f for f in SPEED_FLAGS if f in flags],
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "packages": package_versions(),
        "load_average": list(os.getloadavg()),
    }


def matmul_rate(
    dtype: torch.dtype, size: int = 2048, repeats: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """FLOP/s of one square matmul at the current thread count (median of ``repeats`` after a warm-up).

    With ``clock=time.process_time`` and one thread it is the rate per CPU-second, which other
    processes on a shared machine barely change."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = clock()
        a @ b
        times.append(clock() - start)
    times.sort()
    return 2 * size**3 / times[len(times) // 2]


def single_thread_cpu_rate(dtype: torch.dtype) -> float:
    """``matmul_rate`` per CPU-second of one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return matmul_rate(dtype, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
