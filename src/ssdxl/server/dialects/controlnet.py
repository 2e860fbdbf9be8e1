"""sd-webui-controlnet's API (AUTOMATIC1111's ControlNet extension): units in ``alwayson_scripts``, and the
``/controlnet/...`` routes, mounted at the root as the extension mounts them.

A txt2img/img2img body's ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` (the key in any case: A1111
matches script titles so, and webuiapi sends ``ControlNet``) becomes the request's control units. A unit takes the
extension's fields under their old and new names: ``enabled``, ``module``, ``model`` (``name`` or ``name [hash]`` as
``/controlnet/model_list`` shows it), ``weight``, ``image`` / ``input_image`` (base64, or ``{"image": b64, "mask":
b64}``; on img2img a unit without one uses the init image, as there), ``resize_mode``, ``processor_res``,
``threshold_a`` / ``threshold_b``, ``guidance_start`` / ``guidance_end`` (``guidance``), ``control_mode``,
``pixel_perfect``, ``union_control_type``. Units switched off or without a model (``"None"``) are skipped, as the
extension skips them. ``control_mode`` "ControlNet is more important" is guess mode; "My prompt is more important"
runs as "Balanced" (the extension's soft-injection weighting has no counterpart here). A setting outside its module's
slider (-1 included) runs at the slider's default, silently, as the extension's bound check does (webuiapi sends 64 for
every threshold); the native API refuses such values instead. A unit whose ``module`` is one of the extension's
IP-Adapter modules (``ip-adapter_clip_sdxl``, ...) is an IP-Adapter image prompt: ``model`` names the adapter file
(``GET /v2/ip-adapters``), ``weight`` is its scale, and the image encoder is the one beside the file whichever clip
module is named. What a unit cannot have here (a drawn mask, an effective-region mask, per-layer weights, precomputed
IP-Adapter inputs, FaceID modules, a unit for one hires pass only, an IP-Adapter for part of the steps) is a 422
naming it; ``low_vram``, an IP-Adapter unit's ``control_mode`` (the extension has none for them) and the extension's
UI-only fields are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ssdxl.control.preprocess import RESOLUTION, Slider, get_preprocessor, module_detail, module_list, preprocess
from ssdxl.errors import UserError
from ssdxl.sampling.engine import MAX_CONTROLS, MAX_IMAGE_PROMPTS
from ssdxl.sampling.request import ControlUnit, ImagePrompt
from ssdxl.server.auth import request_key
from ssdxl.server.controls import (
    UnitFields,
    accept_image_prompt,
    accept_unit,
    check_module,
    control_facts,
    ip_adapter_facts,
    needs_a_path,
)
from ssdxl.server.errors import FieldError
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.schemas import MAX_SAMPLES, ControlScale, StepFraction, decode_image, encode_png
from ssdxl.server.service import JobService

router = APIRouter(prefix="/controlnet", tags=["ControlNet (sd-webui-controlnet)"])

SCRIPT = "controlnet"  # the extension's script title, as alwayson_scripts names it (any case)
API_VERSION = 2  # what the extension's /controlnet/version answers
NO_MODEL = (None, "", "None", "none")
A1111_UNIT = UnitFields(preprocessor="module", end="guidance_end", control_type="union_control_type")
RESIZE_MODES = {  # the extension's names (any case), their older aliases and their numbers -> the engine's modes
    "Just Resize": "resize", "Crop and Resize": "crop", "Resize and Fill": "fill",
    "Inner Fit (Scale to Fit)": "crop", "Scale to Fit (Inner Fit)": "crop",
    "Outer Fit (Shrink to Fit)": "fill", "Envelope (Outer Fit)": "fill",
    "0": "resize", "1": "crop", "2": "fill", "3": "resize",  # 3: "Just Resize (Latent upscale)"
}  # fmt: skip
CONTROL_MODES = {  # -> guess mode
    "Balanced": False, "My prompt is more important": False, "ControlNet is more important": True,
    "0": False, "1": False, "2": True,
}  # fmt: skip
UNSUPPORTED = ("effective_region_mask", "advanced_weighting", "ipadapter_input")
IP_PREFIX = "ip-adapter"  # the extension's IP-Adapter modules all start so
IP_MODULES = {  # the extension's CLIP IP-Adapter modules: key -> UI label (FaceID and PuLID need insightface)
    "ip-adapter-auto": "ip-adapter-auto",
    "ip-adapter_clip_sd15": "ip-adapter_clip_h",
    "ip-adapter_clip_sdxl": "ip-adapter_clip_g",
    "ip-adapter_clip_sdxl_plus_vith": "ip-adapter_clip_sdxl_plus_vith",
}
IP_MODULE_NAMES = {name.lower() for pair in IP_MODULES.items() for name in pair}
Setting = TypeVar("Setting", bound=float | None)  # a resolution (int) or a threshold (float, or None: the default)


class ControlNetUnitArgs(BaseModel):
    """One unit as the extension's API takes it; keys it has that change nothing here are ignored."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    module: str | None = "none"
    model: str | None = None
    weight: ControlScale = 1.0
    image: str | dict[str, Any] | None = Field(None, validation_alias=AliasChoices("image", "input_image"))
    mask: str | None = Field(None, validation_alias=AliasChoices("mask", "mask_image"))
    resize_mode: int | str = "Crop and Resize"
    processor_res: int = -1
    threshold_a: float | None = None
    threshold_b: float | None = None
    guidance_start: StepFraction = 0.0
    guidance_end: StepFraction = Field(1.0, validation_alias=AliasChoices("guidance_end", "guidance"))
    pixel_perfect: bool = False
    control_mode: int | str = "Balanced"
    guess_mode: bool = Field(False, validation_alias=AliasChoices("guess_mode", "guessmode"))
    hr_option: str | None = "Both"
    union_control_type: str | None = None
    effective_region_mask: Any = None
    advanced_weighting: Any = None
    ipadapter_input: Any = None


def controlnet_units(
    scripts: dict[str, Any] | None,
    registry: ModelRegistry,
    *,
    init_image: Image.Image | None,
    size: tuple[int | None, int | None],
    hires: bool,
) -> tuple[list[ControlUnit], list[ImagePrompt]]:
    """The control units and IP-Adapter image prompts of an A1111 body's ``alwayson_scripts``, checked; any other
    script is a 422 naming it."""
    units: list[ControlUnit | ImagePrompt] = []
    for key, script in (scripts or {}).items():
        field = f"alwayson_scripts.{key}"
        if key.lower() != SCRIPT:
            raise FieldError(field, f"the {key!r} script is not supported by this server (only ControlNet is)")
        args = script.get("args") if isinstance(script, dict) else None
        if not isinstance(args, list):
            raise FieldError(f"{field}.args", 'must be a list of ControlNet units: {"args": [{...}, ...]}')
        for i, arg in enumerate(args):
            unit = _unit(arg, registry, f"{field}.args.{i}", init_image, size, hires) if arg is not None else None
            if unit is not None:
                units.append(unit)
    controls = [unit for unit in units if isinstance(unit, ControlUnit)]
    prompts = [unit for unit in units if isinstance(unit, ImagePrompt)]
    for found, limit, kind in ((controls, MAX_CONTROLS, "ControlNet"), (prompts, MAX_IMAGE_PROMPTS, "IP-Adapter")):
        if len(found) > limit:
            raise FieldError("alwayson_scripts", f"at most {limit} enabled {kind} units; got {len(found)}")
    return controls, prompts


def _unit(
    arg: Any,
    registry: ModelRegistry,
    field: str,
    init_image: Image.Image | None,
    size: tuple[int | None, int | None],
    hires: bool,
) -> ControlUnit | ImagePrompt | None:
    """One unit (an image prompt for an IP-Adapter module), or None when it is off or names no model (a ControlNet
    module is still checked: a model-free module such as reference_only is refused, not skipped)."""
    if not isinstance(arg, dict):
        raise FieldError(field, "a ControlNet unit is an object of the extension's fields")
    try:
        args = ControlNetUnitArgs.model_validate(arg)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FieldError(".".join([field, *map(str, first["loc"])]), first["msg"]) from None
    if not args.enabled:
        return None
    module = args.module or "none"
    image_prompt = module.strip().lower().startswith(IP_PREFIX)
    settings = bounded_settings(module, args.processor_res, args.threshold_a, args.threshold_b)
    if args.model in NO_MODEL:
        if not image_prompt:
            parts = (A1111_UNIT.preprocessor, A1111_UNIT.processor_res, A1111_UNIT.threshold_a, A1111_UNIT.threshold_b)
            check_module(module, *settings, [f"{field}.{p}" for p in parts])
        return None
    for name in UNSUPPORTED:
        if getattr(args, name) is not None:
            raise FieldError(f"{field}.{name}", "is not supported by this server")
    if hires and (args.hr_option or "Both").strip().lower() != "both":
        raise FieldError(f"{field}.hr_option", "units act in both passes of the hires fix here; only Both")
    image = _image(args, field, init_image)
    if image_prompt:
        return _image_prompt(args, module, image, registry, field)
    resize_mode = _choice(RESIZE_MODES, args.resize_mode, f"{field}.resize_mode")
    processor_res, threshold_a, threshold_b = settings
    if args.pixel_perfect and all(size):
        processor_res = _pixel_perfect(image.size, size, resize_mode)
    union = args.union_control_type
    unit = ControlUnit(
        model=args.model,
        image=image,
        scale=args.weight,
        start=args.guidance_start,
        end=args.guidance_end,
        guess_mode=args.guess_mode or _choice(CONTROL_MODES, args.control_mode, f"{field}.control_mode"),
        preprocessor=module,
        processor_res=processor_res,
        threshold_a=threshold_a,
        threshold_b=threshold_b,
        resize_mode=resize_mode,
        control_type=None if union in (None, "", "Unknown") else union.lower(),
    )
    return accept_unit(unit, registry.controls, field, A1111_UNIT)


def _image_prompt(
    args: ControlNetUnitArgs, module: str, image: Image.Image, registry: ModelRegistry, field: str
) -> ImagePrompt:
    """An IP-Adapter unit as an image prompt: its picture, read by the adapter ``model`` names, at ``weight``."""
    if module.strip().lower() not in IP_MODULE_NAMES:
        message = (
            f"IP-Adapter module {module!r} is not supported here (FaceID and PuLID need insightface face embeddings); "
            f"use one of: {', '.join(IP_MODULES)}"
        )
        raise FieldError(f"{field}.module", message)
    for part, value, full in (("guidance_start", args.guidance_start, 0.0), ("guidance_end", args.guidance_end, 1.0)):
        if value != full:
            raise FieldError(f"{field}.{part}", f"IP-Adapter units act on every step here; only {full:g}")
    prompt = ImagePrompt(args.model, [image], args.weight)
    return accept_image_prompt(prompt, registry, f"{field}.model", f"{field}.image")


def bounded_settings(
    module: str, processor_res: int, threshold_a: float | None, threshold_b: float | None
) -> tuple[int, float | None, float | None]:
    """sd-webui-controlnet's bound check: a resolution or threshold outside its module's slider (-1 among them) is the
    slider's default, silently, as the extension resets it; the native API refuses such values instead."""
    try:
        preprocessor = get_preprocessor(module)
    except UserError:
        return processor_res, threshold_a, threshold_b  # check_module refuses the module itself
    resolution = RESOLUTION if preprocessor.uses_resolution else None
    return (
        int(_within(resolution, processor_res)),
        _within(preprocessor.slider_a, threshold_a),
        _within(preprocessor.slider_b, threshold_b),
    )


def _within(slider: Slider | None, value: Setting) -> Setting | float:
    """``value``, or the slider's default when it is outside the slider (a module without that slider ignores it)."""
    if slider is None or value is None or slider.minimum <= value <= slider.maximum:
        return value
    return slider.value


def _image(args: ControlNetUnitArgs, field: str, init_image: Image.Image | None) -> Image.Image:
    """The unit's picture: its own (plain or the ``{"image", "mask"}`` form), else img2img's init image. A mask with
    anything drawn on it is refused: no preprocessor here uses one."""
    image, mask = args.image, args.mask
    if isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask") or mask
    for part, value in (("image", image), ("mask", mask)):
        if value is not None and not isinstance(value, str):
            raise FieldError(f"{field}.{part}", "must be a base64 image")
    if mask and decode_image(f"{field}.mask", mask).convert("L").getextrema()[1] > 0:
        raise FieldError(f"{field}.mask", "a drawn mask is not supported by this server; send the unit without one")
    if image:
        return decode_image(f"{field}.image", image)
    if init_image is None:
        raise FieldError(f"{field}.image", "a ControlNet unit needs an image (base64) on txt2img")
    return init_image


def _choice(choices: dict[str, Any], value: int | str, field: str) -> Any:
    """What ``value`` (a name in any case, or its number) stands for in ``choices``."""
    found = {name.lower(): meaning for name, meaning in choices.items()}.get(str(value).strip().lower())
    if isinstance(value, bool) or found is None:
        raise FieldError(field, f"unknown value {value!r}; use one of: {', '.join(choices)}")
    return found


def _pixel_perfect(image: tuple[int, int], target: tuple[int, int], resize_mode: str) -> int:
    """The extension's pixel-perfect resolution: the map made at the size it is used at (the image's short side
    scaled to cover the target, or for ``fill`` to fit it), within the preprocessors' resolution slider."""
    ratios = (target[0] / image[0], target[1] / image[1])
    estimate = round((min(ratios) if resize_mode == "fill" else max(ratios)) * min(image))
    return int(min(max(estimate, RESOLUTION.minimum), RESOLUTION.maximum))


# ---------------------------------------------------------------------- /controlnet/...


class DetectRequest(BaseModel):
    """``POST /controlnet/detect``: control maps from pictures, as a unit's preprocessor would make them."""

    controlnet_module: str = "none"
    controlnet_input_images: Annotated[list[str], Field(max_length=MAX_SAMPLES)] = Field(
        [], validation_alias=AliasChoices("controlnet_input_images", "controlnet_images"), description="base64 images"
    )
    controlnet_processor_res: int = Field(
        -1, description="the working size (short side); -1 or outside the slider: the module's default"
    )
    controlnet_threshold_a: float = Field(-1, description="-1 or outside the slider: the module's default")
    controlnet_threshold_b: float = Field(-1, description="-1 or outside the slider: the module's default")
    controlnet_masks: list[str] = Field([], description="only empty: no preprocessor here takes a mask")
    low_vram: bool = Field(False, description="accepted and ignored")


@router.get("/version")
async def version() -> dict[str, int]:
    return {"version": API_VERSION}


@router.get("/model_list")
async def model_list(request: Request, update: bool = True) -> dict[str, list[str]]:
    """The control models, then the IP-Adapters, units may name, as ``name [hash]`` (the folders are read on every
    call: ``update`` is always true here)."""
    registry: ModelRegistry = request.app.state.service.registry

    def usable() -> list[dict[str, Any]]:
        facts = [*control_facts(registry.controls), *ip_adapter_facts(registry)]
        return [fact for fact in facts if "error" not in fact]

    return {"model_list": [f"{fact['name']} [{fact['hash']}]" for fact in await run_in_threadpool(usable)]}


@router.get("/module_list")
async def modules(alias_names: bool = False) -> dict[str, Any]:
    """The preprocessors (``module``) and their sliders, then the IP-Adapter modules (no sliders); ``alias_names``
    gives the extension's UI labels. Modules that need a local model folder (depth) are left out: a request cannot
    name one here, so clients send such maps ready-made with module none."""
    ip_modules = list(IP_MODULES.values() if alias_names else IP_MODULES)
    names = [name for name in module_list(alias_names) if not needs_a_path(name)]
    sliders = module_detail(alias_names)
    no_sliders = {"model_free": False, "sliders": []}
    detail = {name: sliders[name] for name in names} | {name: no_sliders for name in ip_modules}
    return {"module_list": [*names, *ip_modules], "module_detail": detail}


@router.get("/settings")
async def settings() -> dict[str, int]:
    return {"control_net_unit_count": MAX_CONTROLS}


@router.post("/detect")
async def detect(body: DetectRequest, request: Request) -> dict[str, Any]:
    """Run a preprocessor on each image; the maps come back as base64 PNGs."""
    service: JobService = request.app.state.service
    fields = ("controlnet_module", "controlnet_processor_res", "controlnet_threshold_a", "controlnet_threshold_b")
    given = (body.controlnet_processor_res, body.controlnet_threshold_a, body.controlnet_threshold_b)
    settings = bounded_settings(body.controlnet_module, *given)
    module = check_module(body.controlnet_module, *settings, fields)
    if not body.controlnet_input_images:
        raise FieldError("controlnet_input_images", "no image given")
    if any(body.controlnet_masks):
        raise FieldError("controlnet_masks", "no preprocessor here takes a mask; send none")
    inputs = body.controlnet_input_images
    images = await run_in_threadpool(
        lambda: [decode_image(f"controlnet_input_images.{i}", data) for i, data in enumerate(inputs)]
    )
    resolution, threshold_a, threshold_b = settings

    def run() -> list[str]:  # the maps as base64 PNGs: encoding them is image work too
        thresholds = {"threshold_a": threshold_a, "threshold_b": threshold_b}
        return [encode_png(preprocess(module, image, resolution=resolution, **thresholds)) for image in images]

    return {"images": await service.tool(request_key(request), run), "info": "Success"}
