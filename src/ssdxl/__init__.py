"""ssdxl: text-to-image for the SDXL family (SDXL, SSD-1B, Segmind-Vega).

The public API is ``Engine``, ``GenerationRequest`` and ``GenerationResult``; they are imported
on first use so that ``import ssdxl`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

import os
from typing import Any

# Intel's MKL (PyTorch's float32 matrix products on x86) picks code paths by its operands' layout and alignment on
# Intel CPUs, so the same layer on the same numbers could round differently from one call to the next: a LoRA taken
# off or a weight copied moved the base model's output by 1e-6. Strict conditional numerical reproducibility keeps
# equal inputs giving equal bits, at a cost below measurement noise (docs/performance.md); MKL reads it at its first
# call, so it is set when ssdxl is imported, and a user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
__all__ = ["Engine", "GenerationRequest", "GenerationResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from ssdxl.sampling.engine import Engine

        return Engine
    if name in ("GenerationRequest", "GenerationResult"):
        from ssdxl.sampling import request

        return getattr(request, name)
    raise AttributeError(f"module 'ssdxl' has no attribute {name!r}")
