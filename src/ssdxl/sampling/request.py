"""Typed requests and results: one request type serves txt2img, img2img, inpaint and refiner runs.

The kind of run follows from what is given: no ``init_image`` is txt2img, ``init_image`` alone is
img2img, ``init_image`` + ``mask_image`` is inpainting (white = repaint). ``refiner=True`` hands the
base model's latents to the loaded refiner at ``high_noise_fraction`` of the schedule.
``None`` fields take the model's defaults. ``loras`` and ``embeddings`` are per-request adapters
(``ssdxl.adapters``): a LoRA for this request only, an embedding its prompts call by name.

Control and image tools (``ssdxl.control``, ``ssdxl.upscale``) are fields too: ``controls`` (ControlNet /
T2I-Adapter units, as sd-webui-controlnet's units), ``image_prompts`` (IP-Adapter), ``outpaint`` (grow the
init image's canvas and paint the new border) and ``hires`` (A1111's hires fix: generate, upscale,
img2img at the larger size).

``fast_decode`` decodes the final latents with the engine's tiny VAE (``ssdxl.models.tiny_vae``: TAESD / TAESDXL, or
the one a built-in model ships) instead of the model's VAE: several times faster, a little less exact.

``styles`` names prompt styles (A1111's saved styles): ``Engine.resolve`` wraps the prompt and negative prompt in them
and sets ``styles_applied``, so a resolved request (or one read back from a PNG) keeps the names as a record and is
never styled twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

# A1111's LoRA tag, ``<lora:name:weight>`` (and LyCORIS's ``<lyco:…>``), as a prompt carries it: the request's
# LoRAs come from the prompt too (``ssdxl.adapters.library``), and the negative prompt may carry none.
PROMPT_LORA = re.compile(r"<(?:lora|lyco):([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)

@dataclass
class ControlUnit:
    """One ControlNet or T2I-Adapter unit: a model, its control map and how strongly and when it acts."""

    model: str  # name (in --controlnet-dir folders or built in) or path: diffusers folder or single file
    image: Image.Image | None = None  # the control map, or the picture ``preprocessor`` turns into one
    scale: float = 1.0  # conditioning scale (A1111 "weight")
    start: float = 0.0  # fraction of the steps before the unit starts acting (guidance start)
    end: float = 1.0  # fraction of the steps after which it stops (guidance end)
    guess_mode: bool = False  # control on the conditional branch only ("ControlNet is more important")
    preprocessor: str = "none"  # canny, scribble, softedge, lineart, ... run on ``image`` first
    processor_res: int = 512  # the preprocessor's working size (short side), as sd-webui-controlnet's
    threshold_a: float | None = None  # the preprocessor's sliders (canny: low / high); None = its default
    threshold_b: float | None = None
    preprocessor_model: str | None = None  # depth: a local estimator folder (a path: CLI and Python only)
    resize_mode: str = "resize"  # a map of another size: resize (stretch), crop (cover) or fill (fit, pad)
    control_type: str | None = None  # ControlNet-Union models: which condition the map is (canny, depth, ...)

    def to_params(self) -> dict[str, Any]:
        params = dataclasses.asdict(_without(self, "image"))
        params.pop("image")
        return params


@dataclass
class ImagePrompt:
    """An IP-Adapter image prompt: the adapter, the pictures it encodes, and its scale."""

    model: str  # name or path of an IP-Adapter file (or a folder holding one), with its image encoder nearby
    images: list[Image.Image] = field(default_factory=list)
    scale: float = 1.0

    def to_params(self) -> dict[str, Any]:
        return {"model": self.model, "scale": self.scale, "images": len(self.images)}


@dataclass
class Hires:
    """A1111's hires fix: the first pass at the request's size, upscaled by ``scale`` (or to ``width`` x
    ``height``) with ``upscaler``, then img2img at that size for ``steps`` steps at ``strength``."""

    scale: float = 2.0
    width: int | None = None  # A1111 hr_resize_x / hr_resize_y: an exact target instead of ``scale``
    height: int | None = None
    upscaler: str = "Latent"  # a latent mode ("Latent", "Latent (nearest)", ...), "Lanczos", "Nearest" or a model
    steps: int | None = None  # None: the first pass's step count
    strength: float = 0.7  # A1111's default denoising strength for the second pass

    def to_params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    guidance_rescale: float = 0.0  # rescale guided predictions toward the conditional's std (zero-SNR models: 0.7)
    clip_skip: int = 1  # A1111's clip skip: 1 reads the model's usual text-encoder layer, 2 the one before, ...
    cache_interval: int = 1  # DeepCache: a full UNet call every N steps, shallow ones between (1 = off)
    loras: list[tuple[str, float]] = field(default_factory=list)  # (name or path, weight); <lora:name:w> adds
    embeddings: list[str] = field(default_factory=list)  # textual inversions (name or path), called by name
    prompt_syntax: str = "a1111"  # prompt weighting: a1111 "(word:1.2)" or compel "word++"
    controls: list[ControlUnit] = field(default_factory=list)  # ControlNet / T2I-Adapter units, summed
    image_prompts: list[ImagePrompt] = field(default_factory=list)  # IP-Adapters
    outpaint: tuple[int, int, int, int] | None = None  # pixels added (left, top, right, bottom) around init_image
    hires: Hires | None = None
    styles: list[str] = field(default_factory=list)  # prompt styles by name (ssdxl.conditioning.styles), in order
    styles_applied: bool = False  # the prompts already hold ``styles``: Engine.resolve expands them only once
    fast_decode: bool = False  # final decode with the engine's tiny VAE (TAESD-style; Engine.load(tiny_vae=...))

    @property
    def kind(self) -> str:
        if self.init_image is None:
            return "txt2img"
        return "inpaint" if self.mask_image is not None or self.outpaint else "img2img"

    def to_params(self) -> dict[str, Any]:
        """The request's settings without images: what a PNG records to re-create the run. ``RECORDS`` are records
        only: the kind of run and the mask's hash, so ``--from-png`` of an inpainted image asks for its mask again."""
        params = dataclasses.asdict(_without(self, "init_image", "mask_image", "controls", "image_prompts", "hires"))
        for key in ("init_image", "mask_image"):
            params.pop(key)
        params["controls"] = [unit.to_params() for unit in self.controls]
        params["image_prompts"] = [prompt.to_params() for prompt in self.image_prompts]
        params["hires"] = self.hires.to_params() if self.hires else None
        params["kind"] = self.kind
        params["mask_hash"] = image_hash(self.mask_image) if self.mask_image is not None else None
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
    warnings: list[str] = field(default_factory=list)  # what may spoil the images, not failing them (Engine.warnings)

    @property
    def seeds(self) -> list[int]:
        return [g.seed for g in self.images]


RECORDS = ("kind", "mask_hash")  # what ``to_params`` adds besides the fields


def image_hash(image: Image.Image) -> str:
    """A short hash of a mask's pixels as the engine reads them (greyscale; not its file or mode), so a mask re-saved
    in another format, or stored as greyscale by the server, still matches."""
    image = image.convert("L")
    digest = hashlib.sha256(f"{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()[:10]


def _without(obj, *names: str):
    """A shallow copy of a dataclass with ``names`` set to None, so ``asdict`` never deep-copies images."""
    return dataclasses.replace(obj, **{name: None for name in names})
