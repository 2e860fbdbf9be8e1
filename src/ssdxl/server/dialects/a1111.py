"""AUTOMATIC1111's web UI API (``/sdapi/v1/...``), as scripted by clients such as ``webuiapi``.

Answers carry ``images`` (base64 PNGs with the infotext chunk), ``parameters`` (the request echoed)
and ``info`` (a JSON string with seed, all_seeds, infotexts). Sizes and steps left out take the
model's defaults rather than A1111's 512x512/50 steps, which SDXL-family models draw badly; a
left-out ``cfg_scale`` is the model's too (1 with an LCM LoRA, which A1111's 7 would wreck).
The hires fix (``enable_hr``, ``hr_*``) runs as A1111's; ControlNet and IP-Adapter units come in
``alwayson_scripts`` as sd-webui-controlnet takes them (``dialects/controlnet.py``). A1111 features this engine does not
have (face restoration, tiling, scripts, other always-on scripts, a hires pass with its own sampler
or prompt) are refused with a 422 naming the field instead of being silently skipped. The model is
chosen per key with ``POST /sdapi/v1/options {"sd_model_checkpoint": NAME}`` or per request with
``override_settings``. LoRAs are called as in A1111, with ``<lora:name:weight>`` in the prompt, and
listed by ``GET /sdapi/v1/loras``; embeddings by writing their name (``GET /sdapi/v1/embeddings``); saved prompt
styles by name in ``styles`` (``GET /sdapi/v1/prompt-styles``: the built-in ones and ``--styles-file`` ones).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from PIL import ImageFilter
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from starlette.concurrency import run_in_threadpool

from ssdxl.errors import UserError
from ssdxl.sampling.limits import MAX_CLIP_SKIP
from ssdxl.sampling.request import GenerationRequest, Hires
from ssdxl.sampling.schedulers import SAMPLERS, resolve_scheduler, scheduler_names
from ssdxl.server.adapters import embedding_facts, lora_facts
from ssdxl.server.auth import ApiKey, request_key
from ssdxl.server.controls import accept_hires
from ssdxl.server.dialects.controlnet import controlnet_units
from ssdxl.server.errors import FieldError
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.schemas import (
    MAX_SAMPLES,
    Guidance,
    HiresScale,
    HiresSide,
    HiresSteps,
    NegativePrompt,
    Seed,
    Side,
    Steps,
    Strength,
    decode_image,
)
from ssdxl.server.service import JobService, StoredImage
from ssdxl.server.store import QUEUED, RUNNING
from ssdxl.server.styles import accept_styles, style_list

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])

SIGMA_SCHEDULES = {"automatic": "", "karras": " Karras", "exponential": " Exponential"}
NO_NAME = (None, "", "None", "none")  # how A1111 clients say "no refiner" / "no script"
UNSUPPORTED = {  # field -> the values that mean "not used" (what A1111's own defaults send)
    "restore_faces": (False, None),
    "tiling": (False, None),
    "script_name": NO_NAME,
    "subseed_strength": (0, None),
    "disable_extra_networks": (False, None),
    "infotext": (None, ""),
    "firstpass_image": (None, ""),
}
IGNORED = "accepted and ignored"
HIRES_SAME = "the hires pass runs with the first pass's; only empty (or the same) is accepted"
HIRES_SAME_AS = {  # hires-pass field -> (A1111's "use the same" value, the first pass's field it may repeat)
    "hr_checkpoint_name": ("Use same checkpoint", None),
    "hr_sampler_name": ("Use same sampler", "sampler_name"),
    "hr_scheduler": ("Use same scheduler", "scheduler"),
    "hr_prompt": ("", "prompt"),
    "hr_negative_prompt": ("", "negative_prompt"),
}


def _is_off(value: Any, offs: tuple[Any, ...]) -> bool:
    """Whether ``value`` is one of ``offs`` (False is not 0 here, nor 0 False)."""
    for off in offs:
        if isinstance(value, bool) or isinstance(off, bool) or value is None or off is None:
            if value is off:
                return True
        elif value == off:
            return True
    return False


class OverrideSettings(BaseModel, extra="allow"):
    """A1111 settings for one request: ``sd_model_checkpoint`` (a model name) and ``CLIP_stop_at_last_layers`` (clip
    skip) are used here."""

    sd_model_checkpoint: str | None = Field(None, description="a model name (GET /sdapi/v1/sd-models)")
    CLIP_stop_at_last_layers: int | None = Field(None, ge=1, le=MAX_CLIP_SKIP, description="clip skip")


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img fields. A full payload of A1111's defaults is accepted: features this engine does not have
    are refused (422) only when switched on, and sampler tuning, saving and hires-fix settings are ignored."""

    prompt: NegativePrompt = ""
    negative_prompt: NegativePrompt = ""
    styles: list[str] | None = Field(
        None, description="saved styles by name (GET /sdapi/v1/prompt-styles), wrapped around the prompts in order"
    )
    seed: Seed = -1
    subseed: int | None = Field(None, description="used only with subseed_strength > 0, which is not supported")
    subseed_strength: float | None = Field(0.0, description="variation seeds: only 0 is accepted")
    seed_resize_from_h: int | None = Field(None, description="only -1 or 0 (off) are accepted")
    seed_resize_from_w: int | None = Field(None, description="only -1 or 0 (off) are accepted")
    sampler_name: str | None = None
    sampler_index: str | None = Field(None, description="A1111's older name for sampler_name, used when that is empty")
    scheduler: str | None = Field(None, description="Automatic, Karras or Exponential")
    batch_size: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1
    steps: Steps | None = None
    cfg_scale: Guidance | None = Field(None, description="left out: the model's (an LCM LoRA's: 1)")
    width: Side | None = None
    height: Side | None = None
    restore_faces: bool | None = False
    tiling: bool | None = False
    do_not_save_samples: bool | None = Field(None, description=IGNORED)
    do_not_save_grid: bool | None = Field(None, description=IGNORED)
    eta: float | None = Field(None, description=IGNORED)
    denoising_strength: float | None = Field(None, description="with enable_hr: the second pass's strength (0.7)")
    s_min_uncond: float | None = Field(None, description=IGNORED)
    s_churn: float | None = Field(None, description=IGNORED)
    s_tmax: float | None = Field(None, description=IGNORED)
    s_tmin: float | None = Field(None, description=IGNORED)
    s_noise: float | None = Field(None, description=IGNORED)
    override_settings: OverrideSettings = OverrideSettings()
    override_settings_restore_afterwards: bool | None = Field(None, description=IGNORED)
    refiner_checkpoint: str | None = Field(None, description="any name: the model's own refiner; empty or None: off")
    refiner_switch_at: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="fraction of the steps before the refiner takes over (0.8 when left out); 1: no refiner"
    )
    disable_extra_networks: bool | None = Field(False, description="only false: <lora:> tags are always applied")
    firstpass_image: str | None = Field(None, description="a given first pass for the hires fix is not supported")
    comments: dict[str, Any] | None = Field(None, description=IGNORED)
    enable_hr: bool | None = Field(False, description="hires fix: the image upscaled, then re-drawn at that size")
    firstphase_width: int | None = Field(None, description="A1111's old first-pass size: only 0 with enable_hr")
    firstphase_height: int | None = Field(None, description="A1111's old first-pass size: only 0 with enable_hr")
    hr_scale: HiresScale | None = Field(None, description="hires fix: how much larger (2)")
    hr_upscaler: str | None = Field(
        None, description="hires fix: GET /sdapi/v1/latent-upscale-modes or GET /sdapi/v1/upscalers (Latent)"
    )
    hr_second_pass_steps: HiresSteps | None = Field(None, description="hires fix: 0 = the first pass's steps")
    hr_resize_x: HiresSide | None = Field(None, description="hires fix: the width instead of hr_scale (0: scale)")
    hr_resize_y: HiresSide | None = Field(None, description="hires fix: the height instead of hr_scale (0: scale)")
    hr_checkpoint_name: str | None = Field(None, description=HIRES_SAME)
    hr_sampler_name: str | None = Field(None, description=HIRES_SAME)
    hr_scheduler: str | None = Field(None, description=HIRES_SAME)
    hr_prompt: str | None = Field(None, description=HIRES_SAME)
    hr_negative_prompt: str | None = Field(None, description=HIRES_SAME)
    force_task_id: str | None = Field(None, description=IGNORED)
    script_name: str | None = Field(None, description="scripts are not supported: only empty or None")
    script_args: list[Any] | None = Field(None, description="used only with script_name; ignored")
    send_images: bool = Field(True, description="false: the answer's images list is empty")
    save_images: bool | None = Field(None, description="ignored: every result is stored (GET /v2/jobs)")
    alwayson_scripts: dict[str, Any] | None = Field(
        None, description='only ControlNet: {"controlnet": {"args": [unit, ...]}} (sd-webui-controlnet\'s units)'
    )
    infotext: str | None = Field(None, description="setting fields from an infotext is not supported")

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if not _is_off(value, UNSUPPORTED[info.field_name]):
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value

    @field_validator("seed_resize_from_h", "seed_resize_from_w")
    @classmethod
    def _refuse_seed_resize(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > 0:
            raise ValueError(f"{info.field_name} is not supported by this server; use -1 or 0 (off)")
        return value


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(min_length=1, description="base64 images; the first is used")
    mask: str | None = Field(None, description="base64 mask, white = repaint; empty or None: no mask")
    denoising_strength: Strength | None = Field(0.75, description="how much of the image is re-drawn (0.75)")
    mask_blur: Annotated[int, Field(ge=0, le=64)] | None = Field(None, description="both axes (default 4)")
    mask_blur_x: Annotated[int, Field(ge=0, le=64)] = 4
    mask_blur_y: Annotated[int, Field(ge=0, le=64)] = 4
    inpainting_mask_invert: Annotated[int, Field(ge=0, le=1)] = 0
    resize_mode: int | None = Field(None, description=IGNORED)
    image_cfg_scale: float | None = Field(None, description=IGNORED)
    mask_round: bool | None = Field(None, description=IGNORED)
    inpainting_fill: int | None = Field(None, description=IGNORED)
    inpaint_full_res: bool | int | None = Field(None, description=IGNORED)
    inpaint_full_res_padding: int | None = Field(None, description=IGNORED)
    initial_noise_multiplier: float | None = Field(None, description=IGNORED)
    latent_mask: str | None = Field(None, description=IGNORED)
    include_init_images: bool | None = Field(None, description=IGNORED)


class Txt2ImgResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class OptionsUpdate(BaseModel, extra="allow"):
    sd_model_checkpoint: str | None = None


def _scheduler(body: Txt2ImgRequest) -> str | None:
    """A1111 splits sampler and sigma schedule ("DPM++ 2M" + "Karras"); ssdxl names them together.
    ``sampler_index`` is A1111's older field, used when ``sampler_name`` is empty (as A1111 does)."""
    field, sampler = ("sampler_name", body.sampler_name) if body.sampler_name else ("sampler_index", body.sampler_index)
    if not sampler:
        return None
    suffix = SIGMA_SCHEDULES.get((body.scheduler or "automatic").lower())
    if suffix is None:
        raise FieldError("scheduler", f"unknown schedule {body.scheduler!r}; use Automatic, Karras or Exponential")
    name = sampler if sampler.endswith(suffix) else sampler + suffix
    try:
        return resolve_scheduler(name).name
    except UserError as exc:
        raise FieldError(field, str(exc)) from None


DEFAULT_SWITCH = 0.8


def _refiner(body: Txt2ImgRequest) -> tuple[bool, float]:
    """(use the model's refiner, fraction of steps before it takes over). Without ``refiner_checkpoint`` any
    ``refiner_switch_at`` (A1111's default payload sends 0) is off; with one, 1 means it never takes over."""
    switch = body.refiner_switch_at
    if body.refiner_checkpoint in NO_NAME or switch == 1:
        return False, DEFAULT_SWITCH
    if switch is None:
        return True, DEFAULT_SWITCH
    if switch <= 0:
        raise FieldError(
            "refiner_switch_at",
            "with refiner_checkpoint it must be above 0 (the fraction of steps before the refiner takes over; "
            "this server cannot run a whole image on the refiner) or 1 for no refiner",
        )
    return True, switch


def _hires(body: Txt2ImgRequest) -> Hires:
    """A1111's hires fields as the engine's ``Hires``. The second pass runs with the first pass's model, sampler and
    prompts, so ``hr_*`` fields asking for others are refused, as is A1111's old first-pass size."""
    for field, (same, first) in HIRES_SAME_AS.items():
        value = getattr(body, field)
        if value not in NO_NAME and value != same and (first is None or value != getattr(body, first)):
            raise FieldError(field, f"the hires pass runs with the first pass's {first or 'model'}; leave it empty")
    for field in ("firstphase_width", "firstphase_height"):
        if getattr(body, field):
            raise FieldError(field, "A1111's old first-pass size is not supported; use hr_scale or hr_resize_x/y")
    default = Hires()
    strength = default.strength if body.denoising_strength is None else body.denoising_strength
    if not 0 < strength <= 1:
        message = f"with enable_hr: the second pass's strength, above 0 and at most 1 ({default.strength} if left out)"
        raise FieldError("denoising_strength", message)
    return Hires(
        scale=body.hr_scale or default.scale,
        width=body.hr_resize_x or None,
        height=body.hr_resize_y or None,
        upscaler=body.hr_upscaler or default.upscaler,
        steps=body.hr_second_pass_steps or None,
        strength=strength,
    )


def to_generation_request(body: Txt2ImgRequest, registry: ModelRegistry) -> GenerationRequest:
    """The body as the engine's request; ControlNet / IP-Adapter units and the hires upscaler are checked against
    ``registry``."""
    if body.batch_size * body.n_iter > MAX_SAMPLES:
        raise FieldError("batch_size", f"batch_size x n_iter must be at most {MAX_SAMPLES}")
    refiner, switch = _refiner(body)
    request = GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.width,
        height=body.height,
        steps=body.steps,
        guidance_scale=body.cfg_scale,
        scheduler=_scheduler(body),
        seed=body.seed,
        samples=body.batch_size * body.n_iter,
        refiner=refiner,
        high_noise_fraction=switch,
        styles=list(body.styles or []),
        clip_skip=body.override_settings.CLIP_stop_at_last_layers or 1,
    )
    request = accept_styles(request, registry.styles, "styles")
    if isinstance(body, Img2ImgRequest):
        request.init_image = decode_image("init_images", body.init_images[0])
        request.strength = 0.75 if body.denoising_strength is None else body.denoising_strength
        if body.mask:  # A1111 treats an empty mask as none
            mask = decode_image("mask", body.mask).convert("L")
            if body.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
            blur = (
                (body.mask_blur, body.mask_blur) if body.mask_blur is not None else (body.mask_blur_x, body.mask_blur_y)
            )
            request.mask_image = mask.filter(ImageFilter.GaussianBlur(blur)) if any(blur) else mask
    request.controls, request.image_prompts = controlnet_units(
        body.alwayson_scripts,
        registry,
        init_image=request.init_image,
        size=(body.width, body.height),
        hires=bool(body.enable_hr),
    )
    if body.enable_hr:
        request.hires = _hires(body)
        request = accept_hires(request, registry, "enable_hr", "hr_upscaler")
    return request


def _current_model(service: JobService, caller: ApiKey | None) -> str:
    chosen = service.store.meta(_model_setting(caller))
    return chosen if chosen in service.registry.sources else service.registry.default


def _model_setting(caller: ApiKey | None) -> str:
    return f"a1111.sd_model_checkpoint.{caller.id if caller else 'all'}"


async def _generate(body: Txt2ImgRequest, request: Request) -> Txt2ImgResponse:
    service: JobService = request.app.state.service
    model, generation = await run_in_threadpool(_accept, body, service, request_key(request))
    images = await service.run(generation, model=model, client=request)
    return await run_in_threadpool(_answer, body, generation, model, images)


def _accept(body: Txt2ImgRequest, service: JobService, caller: ApiKey | None) -> tuple[str, GenerationRequest]:
    """The model (the request's override, else the key's choice in the store) and the request, its images decoded:
    store and image work, so it runs in a thread."""
    chosen = body.override_settings.sd_model_checkpoint
    if chosen:
        model = service.registry.check(chosen, field="override_settings.sd_model_checkpoint")
    else:
        model = _current_model(service, caller)
    return model, to_generation_request(body, service.registry)


def _answer(
    body: Txt2ImgRequest, generation: GenerationRequest, model: str, images: list[StoredImage]
) -> Txt2ImgResponse:
    """A1111's answer, the images read from their files (in a thread)."""
    info = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "seed": images[0].seed,
        "all_seeds": [i.seed for i in images],
        "all_prompts": [generation.prompt] * len(images),  # as A1111's: with the styles applied
        "styles": generation.styles,
        "infotexts": [i.infotext for i in images],
        "sd_model_name": model,
    }
    return Txt2ImgResponse(
        images=[base64.b64encode(i.data).decode() for i in images] if body.send_images else [],
        parameters=body.model_dump(exclude={"init_images", "mask"}),
        info=json.dumps(info),
    )


@router.post("/txt2img", response_model=Txt2ImgResponse)
async def txt2img(body: Txt2ImgRequest, request: Request) -> Txt2ImgResponse:
    return await _generate(body, request)


@router.post("/img2img", response_model=Txt2ImgResponse)
async def img2img(body: Img2ImgRequest, request: Request) -> Txt2ImgResponse:
    """img2img from ``init_images[0]``; with ``mask`` it inpaints (white = repaint)."""
    return await _generate(body, request)


@router.get("/progress")
def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    """The caller's newest running job: fraction done, ETA, step and a latent preview."""
    service: JobService = request.app.state.service
    caller = request_key(request)
    running = service.store.recent(caller.id if caller else None, 1, status=RUNNING)
    job_count = service.store.count((QUEUED, RUNNING), caller.id if caller else None)
    state = {"job": "", "job_count": job_count, "sampling_step": 0, "sampling_steps": 0, "interrupted": False}
    if not running:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    job = running[0]
    fraction = job.step / job.total if job.total else 0.0
    elapsed = max(0.0, time.time() - (job.started or job.created))
    eta = elapsed / fraction - elapsed if fraction else 0.0
    state.update(job=job.id, sampling_step=job.step, sampling_steps=job.total, interrupted=job.cancel_requested)
    preview = None if skip_current_image or not job.preview else base64.b64encode(job.preview).decode()
    return {"progress": fraction, "eta_relative": eta, "state": state, "current_image": preview, "textinfo": None}


@router.post("/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    """Stop the caller's running jobs at their next step (queued jobs stay queued)."""
    service: JobService = request.app.state.service
    caller = request_key(request)
    for job in service.store.recent(caller.id if caller else None, 100, status=RUNNING):
        service.cancel(job.id)
    return {}


@router.get("/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    families = request.app.state.service.registry.families()  # an ssdxl addition to A1111's fields
    return [
        {"title": n, "model_name": n, "hash": None, "sha256": None, "filename": n, "config": None, "family": f}
        for n, f in families.items()
    ]


@router.get("/samplers")
async def samplers() -> list[dict[str, Any]]:
    aliases = {s.name: list(s.aliases) for s in SAMPLERS}
    return [{"name": n, "aliases": aliases.get(n, []), "options": {}} for n in scheduler_names()]


@router.get("/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    return [{"name": n, "label": n.capitalize()} for n in SIGMA_SCHEDULES]


@router.get("/options")
def get_options(request: Request) -> dict[str, Any]:
    return {"sd_model_checkpoint": _current_model(request.app.state.service, request_key(request))}


@router.post("/options")
def set_options(body: OptionsUpdate, request: Request) -> dict[str, Any]:
    """Only ``sd_model_checkpoint`` is an option here; other keys are accepted and ignored."""
    service: JobService = request.app.state.service
    if body.sd_model_checkpoint is not None:
        name = service.registry.check(body.sd_model_checkpoint, field="sd_model_checkpoint")
        service.store.set_meta(_model_setting(request_key(request)), name)
    return {}


@router.get("/prompt-styles")
async def prompt_styles(request: Request) -> list[dict[str, str]]:
    """The styles ``styles`` may name, in A1111's shape: name, prompt (``{prompt}`` marks the user's), negative."""
    return style_list(request.app.state.service.registry.styles)


A1111_LORA_METADATA = ("hash", "format", "rank", "parts", "base_model", "few_step", "error")


@router.get("/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRAs ``<lora:name:weight>`` may call, in A1111's shape; ``path`` is the file name only."""
    listed = []
    for facts in lora_facts(request.app.state.service.registry.adapters):
        name = facts.pop("name")
        metadata = {k: facts[k] for k in A1111_LORA_METADATA if k in facts}
        listed.append({"name": name, "alias": name, "path": facts.get("file", name), "metadata": metadata})
    return listed


@router.post("/refresh-loras")
def refresh_loras(request: Request) -> None:
    """Re-read the LoRA folders (A1111's button next to the Lora tab)."""
    request.app.state.service.registry.refresh_adapters()


@router.get("/embeddings")
def embeddings(request: Request) -> dict[str, dict[str, Any]]:
    """Embeddings in A1111's shape: ``shape`` is the width of a vector (both text encoders' together for SDXL files);
    files that cannot be read are under ``skipped``."""
    loaded, skipped = {}, {}
    for facts in embedding_facts(request.app.state.service.registry.adapters):
        entry = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        if "error" in facts:
            skipped[facts["name"]] = {**entry, "shape": None, "vectors": None}
            continue
        loaded[facts["name"]] = {**entry, "shape": sum(facts["widths"].values()), "vectors": facts["vectors"]}
    return {"loaded": loaded, "skipped": skipped}


@router.post("/refresh-embeddings")
def refresh_embeddings(request: Request) -> None:
    """Re-read the embedding folders."""
    request.app.state.service.registry.refresh_adapters()
