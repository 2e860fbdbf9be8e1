"""Field types shared by every dialect, and the native jobs API's request and response models.

Every dialect's body model is built from these annotated types, and they from the request limits the CLI and the
engine read (``ssdxl.sampling.limits``), so a bad value is a 422 naming the field whichever API it came through, and
refused alike by ``ssdxl generate``. Numbers sent as numeric strings
(``"guidance_scale": "9"``, as Segmind's own examples do) are accepted by pydantic's lax mode.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ssdxl.control.outpaint import MAX_GROW
from ssdxl.errors import UserError
from ssdxl.sampling.engine import MAX_CONTROL_SCALE, MAX_CONTROLS, MAX_HIRES_SCALE, MAX_IMAGE_PROMPTS
from ssdxl.sampling.limits import (
    MAX_CLIP_SKIP,
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_STYLES,
    MIN_SIDE,
    SIZE_MULTIPLE,
)
from ssdxl.sampling.schedulers import resolve_scheduler
from ssdxl.server.errors import FieldError, public_text

MAX_INPUT_SIDE = 4096  # uploaded images; larger ones are refused before decoding fully


def _known_scheduler(name: str) -> str:
    try:
        return resolve_scheduler(name).name
    except UserError as exc:
        raise ValueError(str(exc)) from None


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS, description="may be empty, as in A1111 and diffusers")]
NegativePrompt = Prompt  # the same rule for both
Side = Annotated[
    int,
    Field(ge=MIN_SIDE, le=MAX_SIDE, multiple_of=SIZE_MULTIPLE, description=f"pixels, a multiple of {SIZE_MULTIPLE}"),
]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Guidance = Annotated[float, Field(ge=0, le=MAX_GUIDANCE)]
Seed = Annotated[int, Field(ge=-1, le=MAX_SEED - MAX_SAMPLES, description="-1 picks a random seed")]
Samples = Annotated[int, Field(ge=1, le=MAX_SAMPLES)]
Strength = Annotated[float, Field(gt=0, le=1)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
SchedulerName = Annotated[str, AfterValidator(_known_scheduler), Field(description="e.g. Euler, 'DPM++ 2M Karras'")]
PromptSyntax = Annotated[
    Literal["a1111", "compel"], Field(description="prompt weighting: a1111 '(word:1.2)' or compel 'word++'")
]
ControlScale = Annotated[float, Field(ge=0, le=MAX_CONTROL_SCALE, description="conditioning scale (A1111: weight)")]
StepFraction = Annotated[float, Field(ge=0, le=1, description="fraction of the steps")]
HiresScale = Annotated[float, Field(ge=1, le=MAX_HIRES_SCALE)]
HiresSide = Annotated[int, Field(ge=0, le=MAX_SIDE, description="0: from the scale; one side alone keeps the aspect")]
HiresSteps = Annotated[int, Field(ge=0, le=MAX_STEPS, description="0: the first pass's step count")]
Growth = Annotated[int, Field(ge=0, le=MAX_GROW, description="pixels added on this side")]
Styles = Annotated[
    list[str],
    Field(
        max_length=MAX_STYLES,
        description="prompt styles by name (GET /v2/styles), wrapped around the prompts in order",
        examples=[["cinematic"]],
    ),
]
Loras = Annotated[
    list[Any],
    Field(
        description='LoRAs by name (GET /v2/loras) and weight (-10..10): [{"name": "style", "weight": 0.8}] or '
        '[["style", 0.8]]; <lora:name:weight> in the prompt adds more',
        examples=[[{"name": "style", "weight": 0.8}]],
    ),
]


UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")  # JPEG includes MPO, a phone camera's JPEG
KEPT_MODES = ("RGB", "RGBA", "L", "LA")


def decode_image(field: str, data: str | bytes) -> Image.Image:
    """An uploaded image (base64 text, optionally a data URL, or raw bytes) or a FieldError naming ``field``.

    Only PNG, JPEG and WebP are taken (by what the file is, not its name); other colour modes (CMYK,
    palette, 16-bit) are converted to RGB, or RGBA where the image has transparency.
    """
    if isinstance(data, str):
        text = data.split(",", 1)[1] if data.startswith("data:") else data
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise FieldError(field, "not valid base64") from None
    if not data:
        raise FieldError(field, "is empty; send a PNG, JPEG or WebP image")
    try:
        with Image.open(io.BytesIO(data), formats=list(UPLOAD_FORMATS)) as image:
            if max(image.size) > MAX_INPUT_SIDE:
                raise FieldError(field, f"image is {image.width}x{image.height}; the limit is {MAX_INPUT_SIDE} a side")
            image.load()
            return _plain_mode(image)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise FieldError(field, "not a readable PNG, JPEG or WebP image") from None


def encode_png(image: Image.Image) -> str:
    """An image as base64 PNG text, the way A1111's answers carry images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _plain_mode(image: Image.Image) -> Image.Image:
    if image.mode in KEPT_MODES:
        return image.copy()
    if image.mode.startswith("I"):  # 16-bit grey: the top 8 bits, not values clipped at 255
        return Image.fromarray((np.asarray(image.convert("I")) >> 8).clip(0, 255).astype(np.uint8))
    transparent = "transparency" in image.info or "A" in image.getbands() or image.mode == "PA"
    return image.convert("RGBA" if transparent else "RGB")


# ---------------------------------------------------------------------- the native jobs API (/v2)


class ControlUnitBody(BaseModel):
    """One ControlNet / T2I-Adapter unit: a model by name, its map, how strongly and when it acts."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="a ControlNet name from GET /v2/controlnets")
    image: str = Field(description="base64 image (or data URL): the control map, or the picture preprocessor maps")
    scale: ControlScale = 1.0
    start: StepFraction = 0.0
    end: StepFraction = 1.0
    guess_mode: bool = Field(False, description="control on the conditional branch only (more control, less prompt)")
    preprocessor: str = Field("none", description="canny, scribble, ... (GET /controlnet/module_list); none: a map")
    processor_res: int = Field(512, description="the preprocessor's working size, short side; -1: 512; 0: the image's")
    threshold_a: float | None = Field(None, description="the preprocessor's first slider; left out: its default")
    threshold_b: float | None = Field(None, description="the preprocessor's second slider; left out: its default")
    resize_mode: Literal["resize", "crop", "fill"] = Field(
        "resize", description="a map of another size: stretch, cover and crop, or fit and pad"
    )
    control_type: str | None = Field(None, description="ControlNet-Union models: canny, depth, openpose, ...")


class ImagePromptBody(BaseModel):
    """One IP-Adapter image prompt: an adapter by name, the pictures it reads, and how strongly it acts."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="an IP-Adapter name from GET /v2/ip-adapters")
    images: list[str] = Field(
        max_length=MAX_IMAGE_PROMPTS, description=f"1 to {MAX_IMAGE_PROMPTS} base64 images (or data URLs)"
    )
    scale: ControlScale = 1.0


class HiresBody(BaseModel):
    """A1111's hires fix (txt2img only): the image made at the request's size, upscaled, then re-drawn."""

    model_config = ConfigDict(extra="forbid")

    scale: HiresScale = 2.0
    width: HiresSide = 0
    height: HiresSide = 0
    upscaler: str = Field("Latent", description="a latent mode or an upscaler name (GET /v2/upscalers)")
    steps: HiresSteps = 0
    strength: Strength = Field(0.7, description="how much the second pass re-draws")


class OutpaintBody(BaseModel):
    """Pixels to add around ``init_image``; the new border is painted, every original pixel kept."""

    model_config = ConfigDict(extra="forbid")

    left: Growth = 0
    top: Growth = 0
    right: Growth = 0
    bottom: Growth = 0


class JobRequest(BaseModel):
    """A generation job; fields left out take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    model: str | None = Field(None, description="a model name from GET /v2/models; default: the server's")
    width: Side | None = None
    height: Side | None = None
    steps: Steps | None = None
    guidance_scale: Guidance | None = None
    scheduler: SchedulerName | None = None
    seed: Seed = -1
    samples: Samples = 1
    init_image: str | None = Field(None, description="base64 image: img2img (with mask_image: inpainting)")
    mask_image: str | None = Field(None, description="base64 image, white = repaint")
    strength: Strength | None = None
    refiner: bool = False
    high_noise_fraction: Fraction = 0.8
    guidance_cutoff: Annotated[float, Field(ge=0, le=1)] = 1.0
    guidance_rescale: Annotated[float, Field(ge=0, le=1, description="zero-terminal-SNR models: 0.7")] = 0.0
    clip_skip: Annotated[int, Field(ge=1, le=MAX_CLIP_SKIP, description="A1111's clip skip (2: the layer before)")] = 1
    fast_decode: bool = Field(
        False, description="decode with the model's tiny VAE (TAESD-style): faster, a little less exact"
    )
    loras: Loras = []
    prompt_syntax: PromptSyntax = "a1111"
    styles: Styles = []
    controls: list[ControlUnitBody] = Field(
        [], max_length=MAX_CONTROLS, description="ControlNet / T2I-Adapter units (GET /v2/controlnets), summed"
    )
    image_prompts: list[ImagePromptBody] = Field(
        [], max_length=MAX_IMAGE_PROMPTS, description="IP-Adapter image prompts (GET /v2/ip-adapters)"
    )
    hires: HiresBody | None = Field(None, description="A1111's hires fix: txt2img, upscaled, then img2img at that size")
    outpaint: OutpaintBody | None = Field(None, description="grow init_image's canvas, paint the new border (no mask)")


def _public_error(text: str | None) -> str | None:
    return None if text is None else public_text(text)


class ImageLink(BaseModel):
    url: str
    seed: int
    infotext: str


class JobView(BaseModel):
    id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    model: str
    position: int = Field(description="jobs ahead of this one while queued")
    step: int
    total: int
    cancel_requested: bool
    attempts: int
    created: float
    started: float | None
    finished: float | None
    error: Annotated[str | None, AfterValidator(_public_error)] = Field(
        description="why the job failed (server paths shown as file names)"
    )
    batch_size: int | None = Field(description="images in the UNet batch that made this job's images")
    images: list[ImageLink]
    warnings: list[str] = Field(
        description="what may spoil the images without failing the job (a size far above the model's own)"
    )
    params: dict[str, Any] = Field(description="the request as stored, images as file names")


class LimitsView(BaseModel):
    """The request limits this server enforces (the shared ones, or lower ones its operator chose), for forms."""

    min_side: int
    max_side: int
    max_steps: int
    max_samples: int
    max_prompt_chars: int


class ModelsView(BaseModel):
    models: list[str]
    families: dict[str, str | None] = {}  # model name -> sd1, sd2, sd2-v, sdxl, sdxl-refiner (None: unknown)
    fast_decode: list[str] = []  # the models with a tiny VAE: the ones a request may ask for fast_decode
    default: str
    schedulers: list[str]
    limits: LimitsView
