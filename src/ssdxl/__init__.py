"""ssdxl: text-to-image for the SDXL family (SDXL, SSD-1B, Segmind-Vega).

The public API is ``Engine``, ``GenerationRequest`` and ``GenerationResult``; they are imported
on first use so that ``import ssdxl`` (and the CLI's start-up) stays light.
"""

from __future__ import annotations

from typing import Any

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
