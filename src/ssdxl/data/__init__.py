"""Training data: the procedural shapes world and image+caption folders."""

from ssdxl.data.shapes import (
    HELDOUT_COMBINATIONS,
    HELDOUT_PAIRS,
    HELDOUT_TRIPLES,
    Sample,
    Scene,
    ShapeSpec,
    ShapesWorld,
    render,
)

__all__ = [
    "HELDOUT_COMBINATIONS",
    "HELDOUT_PAIRS",
    "HELDOUT_TRIPLES",
    "Sample",
    "Scene",
    "ShapeSpec",
    "ShapesWorld",
    "render",
]
