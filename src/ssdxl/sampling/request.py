"""Typed requests and results: one request type serves txt2img, img2img, inpaint and refiner runs.

The kind of run follows from what is given: no ``init_image`` is txt2img, ``init_image`` alone is
img2img, ``init_image`` + ``mask_image`` is inpainting (white = repaint). ``refiner=True`` hands the
base model's latents to the loaded refiner at ``high_noise_fraction`` of the schedule.
``None`` fields take the model's defaults. ``loras`` and ``embeddings`` are per-request adapters
(``ssdxl.adapters``): a LoRA for this request only, an embedding its prompts call by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    seed: int = -1
    samples: int = 1
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    strength: float | None = None
    refiner: bool = False
    high_noise_fraction: float = 0.8
    original_size: tuple[int, int] | None = None  # (width, height) the model is told the source had
    target_size: tuple[int, int] | None = None  # (width, height); defaults to the output size
    crop_top_left: tuple[int, int] = (0, 0)  # (top, left)
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5
    guidance_cutoff: float = 1.0  # fraction of the steps that use classifier-free guidance
    cache_interval: int = 1  # DeepCache: a full UNet call every N steps, shallow ones between (1 = off)
    loras: list[tuple[str, float]] = field(default_factory=list)  # (name or path, weight); <lora:name:w> adds
    embeddings: list[str] = field(default_factory=list)  # textual inversions (name or path), called by name
    prompt_syntax: str = "a1111"  # prompt weighting: a1111 "(word:1.2)" or compel "word++"

    @property
    def kind(self) -> str:
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask_image is not None else "img2img"

    def to_params(self) -> dict[str, Any]:
        """The request's settings without images: what a PNG records to re-create the run."""
        params = dataclasses.asdict(self)
        for key in ("init_image", "mask_image"):
            params.pop(key)
        return params


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str  # AUTOMATIC1111-style "parameters" text
    params: dict[str, Any]  # the fully resolved request, seed included


@dataclass
class GenerationResult:
    images: list[GeneratedImage]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    model: str = ""

    @property
    def seeds(self) -> list[int]:
        return [g.seed for g in self.images]
