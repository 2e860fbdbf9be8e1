"""The request contract: one set of limits, one ``WxH`` reader, and the checks that need no model.

Every entry point runs ``check_request`` on a request as it was given: ``Engine.resolve`` (the CLI and the Python
API) and the server's ``JobService.submit`` (every HTTP dialect, when the request arrives: a 4xx then, never a failed
job). The server's field types (``server/schemas.py``) are built from the same numbers, so a value is refused alike
whichever way it came in. A server may lower the side, step and sample limits (``RequestLimits``, ``ssdxl serve
--max-side/--max-steps/--max-samples``), never raise them.

The images a request makes besides its first pass are sized by one rule each, taking the side limit as a parameter (the
shared ``MAX_SIDE`` unless a server lowered it): a hires fix's second pass (``check_hires_size``) and an outpaint's
grown canvas (``check_canvas``). ``check_request`` applies the canvas rule as soon as the request is given; the engine
and the server apply the hires rule where the first pass's size is known.

Sizes are (width, height) wherever a request holds one (``original_size``, ``target_size``, ``--original-size WxH``);
SDXL's ``time_ids`` take (height, width), and the engine turns them round there, once.

Kept free of heavy imports: the CLI's subcommand modules and the server's schemas read it at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ssdxl.errors import FieldError, UserError
from ssdxl.sampling.request import PROMPT_LORA

if TYPE_CHECKING:
    from ssdxl.sampling.request import GenerationRequest

SIZE_MULTIPLE = 8  # image sides: whole latent pixels
MIN_SIDE = 32  # the built-in model draws at 80x48 and 48x80 too (its training canvases are at least 32 a side)
MAX_SIDE = 2048  # AUTOMATIC1111's; larger images come from the hires fix or `ssdxl upscale`
MAX_STEPS = 150  # AUTOMATIC1111's
MAX_SAMPLES = 8  # images one request makes (on the server, one UNet batch)
MAX_PROMPT_CHARS = 4000  # the prompt and the negative prompt, each (about 11 chunks of 75 tokens)
MAX_GUIDANCE = 50.0
MAX_SEED = 2**63 - 1
MAX_STYLES = 8  # prompt styles a request may name
MAX_CLIP_SKIP = 12  # AUTOMATIC1111's slider; a model with fewer text-encoder layers refuses more when resolving
OVERSIZE_AREA = 2.25  # an image above this many times its model's default area (1.5x a side) gets a warning


@dataclass(frozen=True)
class RequestLimits:
    """The limits a server enforces: the shared ones, or lower ones its operator chose."""

    max_side: int = MAX_SIDE
    max_steps: int = MAX_STEPS
    max_samples: int = MAX_SAMPLES

    def __post_init__(self) -> None:
        for option, value, low, high in (
            ("--max-side", self.max_side, MIN_SIDE, MAX_SIDE),
            ("--max-steps", self.max_steps, 1, MAX_STEPS),
            ("--max-samples", self.max_samples, 1, MAX_SAMPLES),
        ):
            if not low <= value <= high:
                raise UserError(f"{option} must be between {low} and {high} (it can only lower the limit), got {value}")
        if self.max_side % SIZE_MULTIPLE:
            raise UserError(f"--max-side must be a multiple of {SIZE_MULTIPLE}, got {self.max_side}")


LIMITS = RequestLimits()


def parse_size(text: str, field: str) -> tuple[int, int]:
    """``"WxH"`` as (width, height); a FieldError naming ``field`` (an option or a request field) otherwise."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FieldError(field, f"must look like WIDTHxHEIGHT, e.g. 1024x1024; got {text!r}") from None
    if min(width, height) < 0:
        raise FieldError(field, f"sides cannot be negative; got {text!r}")
    return width, height


def check_side(field: str, value: int, max_side: int = MAX_SIDE) -> None:
    """An image side within the limits; else an error naming the nearest valid one (what the user likely meant)."""
    if value % SIZE_MULTIPLE or not MIN_SIDE <= value <= max_side:
        nearest = min(max_side, max(MIN_SIDE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE))
        bounds = f"a multiple of {SIZE_MULTIPLE} from {MIN_SIDE} to {max_side}"
        raise FieldError(field, f"{value} is not {bounds}; nearest valid: {nearest}")


def hires_size(r: GenerationRequest) -> tuple[int, int]:
    """The second pass's (width, height): A1111's hr_resize_x/y (one of them keeps the aspect), else the scale;
    multiples of 8. Needs the first pass's size unless both hires sides are given."""
    hr = r.hires
    if hr.width and hr.height:
        width, height = hr.width, hr.height
    elif hr.width or hr.height:
        ratio = (hr.width / r.width) if hr.width else (hr.height / r.height)
        width, height = hr.width or r.width * ratio, hr.height or r.height * ratio
    else:
        width, height = r.width * hr.scale, r.height * hr.scale
    return (int(round(width / SIZE_MULTIPLE)) * SIZE_MULTIPLE, int(round(height / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def check_hires_size(r: GenerationRequest, field: str = "hires", max_side: int = MAX_SIDE) -> None:
    """The hires fix's second pass (``hires_size``) within ``MIN_SIDE`` to ``max_side`` a side; else a FieldError
    under ``field`` (the client's name for the hires settings)."""
    width, height = hires_size(r)
    if min(width, height) < MIN_SIDE or max(width, height) > max_side:
        first = f" (first pass {r.width}x{r.height})" if r.width and r.height else ""
        message = f"the second pass would be {width}x{height}{first}; sides must be between {MIN_SIDE} and {max_side}"
        raise FieldError(field, message)


def canvas_size(size: tuple[int, int], sides: tuple[int, int, int, int]) -> tuple[int, int]:
    """An image of ``size`` grown by (left, top, right, bottom) pixels."""
    left, top, right, bottom = sides
    return size[0] + left + right, size[1] + top + bottom


def check_canvas(
    size: tuple[int, int], sides: tuple[int, int, int, int], field: str = "outpaint", max_side: int = MAX_SIDE
) -> None:
    """An outpaint's grown canvas (the image made) within ``max_side`` a side; else a FieldError under ``field``."""
    width, height = canvas_size(size, sides)
    if max(width, height) > max_side:
        raise FieldError(field, f"the grown canvas would be {width}x{height}; its sides must be at most {max_side}")


def check_request(r: GenerationRequest, limits: RequestLimits = LIMITS) -> None:
    """Every field given (None: the model's default, checked once known) within the limits, and no setting that
    needs an input the request lacks; a FieldError naming the first field at fault."""
    for field in ("prompt", "negative_prompt"):
        length = len(getattr(r, field))
        if length > MAX_PROMPT_CHARS:
            raise FieldError(field, f"is {length:,} characters long; the limit is {MAX_PROMPT_CHARS:,}")
    tag = PROMPT_LORA.search(r.negative_prompt)
    if tag:
        message = f"holds {tag.group(0)}: LoRAs are applied from the prompt only; move the tag there"
        raise FieldError("negative_prompt", message)
    for field in ("width", "height"):
        if getattr(r, field) is not None:
            check_side(field, getattr(r, field), limits.max_side)
    if r.steps is not None:
        _between("steps", r.steps, 1, limits.max_steps)
    if r.guidance_scale is not None:
        _between("guidance_scale", r.guidance_scale, 0, MAX_GUIDANCE)
    _between("samples", r.samples, 1, limits.max_samples)
    if r.seed != -1 and not 0 <= r.seed <= MAX_SEED - r.samples:
        raise FieldError("seed", f"must be -1 (random) or between 0 and {MAX_SEED - r.samples}, got {r.seed}")
    if r.strength is not None and not 0 < r.strength <= 1:
        raise FieldError("strength", f"must be in (0, 1], got {r.strength}")
    if not 0 < r.high_noise_fraction < 1:
        raise FieldError("high_noise_fraction", f"must be in (0, 1), got {r.high_noise_fraction}")
    _between("guidance_cutoff", r.guidance_cutoff, 0, 1)
    _between("cache_interval", r.cache_interval, 1, limits.max_steps)
    if r.init_image is None and r.strength is not None:
        raise FieldError("strength", "is for img2img and inpainting: give an init image, or leave strength out")
    if r.init_image is None and r.mask_image is not None:
        raise FieldError("mask_image", "needs an init image to inpaint")
    _between("clip_skip", r.clip_skip, 1, MAX_CLIP_SKIP)
    _between("guidance_rescale", r.guidance_rescale, 0, 1)
    if len(r.styles) > MAX_STYLES:
        raise FieldError("styles", f"at most {MAX_STYLES} styles a request; got {len(r.styles)}")
    if r.outpaint is not None and r.init_image is not None and _well_formed(r.outpaint):
        check_canvas(r.init_image.size, r.outpaint, "outpaint", limits.max_side)  # the rest: outpaint.check_sides


def _well_formed(sides) -> bool:
    """Four whole, non-negative pixel counts: what ``outpaint.check_sides`` refuses otherwise, with why."""
    try:
        return len(sides) == 4 and all(v >= 0 and int(v) == v for v in sides)
    except (TypeError, ValueError, OverflowError):
        return False


def _between(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise FieldError(field, f"must be between {low:g} and {high:g}, got {value:g}")
