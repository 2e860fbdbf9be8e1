"""AUTOMATIC1111's web UI API (``/sdapi/v1/...``), as scripted by clients such as ``webuiapi``.

Answers carry ``images`` (base64 PNGs with the infotext chunk), ``parameters`` (the request echoed)
and ``info`` (a JSON string with seed, all_seeds, infotexts). Sizes and steps left out take the
model's defaults rather than A1111's 512x512/50 steps, which SDXL-family models draw badly; a
left-out ``cfg_scale`` is the model's too (1 with an LCM LoRA, which A1111's 7 would wreck).
A1111 features this engine does not have (hires fix, face restoration, tiling, scripts) are
refused with a 422 naming the field instead of being silently skipped. The model is chosen per
key with ``POST /sdapi/v1/options {"sd_model_checkpoint": NAME}`` or per request with
``override_settings``. LoRAs are called as in A1111, with ``<lora:name:weight>`` in the prompt, and
listed by ``GET /sdapi/v1/loras``; embeddings by writing their name (``GET /sdapi/v1/embeddings``).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from PIL import ImageFilter
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from ssdxl.errors import UserError
from ssdxl.sampling.request import GenerationRequest
from ssdxl.sampling.schedulers import SAMPLERS, resolve_scheduler, scheduler_names
from ssdxl.server.adapters import embedding_facts, lora_facts
from ssdxl.server.auth import ApiKey, request_key
from ssdxl.server.errors import FieldError
from ssdxl.server.schemas import (
    MAX_SAMPLES,
    Fraction,
    Guidance,
    NegativePrompt,
    Prompt,
    Seed,
    Side,
    Steps,
    Strength,
    decode_image,
)
from ssdxl.server.service import JobService
from ssdxl.server.store import QUEUED, RUNNING

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])

SIGMA_SCHEDULES = {"automatic": "", "karras": " Karras", "exponential": " Exponential"}
UNSUPPORTED = {  # field -> the value that means "not used"
    "enable_hr": False,
    "restore_faces": False,
    "tiling": False,
    "script_name": None,
    "alwayson_scripts": {},
    "subseed_strength": 0.0,
}


class Txt2ImgRequest(BaseModel):
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    seed: Seed = -1
    sampler_name: str | None = None
    scheduler: str | None = Field(None, description="Automatic, Karras or Exponential")
    batch_size: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1
    steps: Steps | None = None
    cfg_scale: Guidance | None = Field(None, description="left out: the model's (an LCM LoRA's: 1)")
    width: Side | None = None
    height: Side | None = None
    refiner_checkpoint: str | None = None
    refiner_switch_at: Fraction = 0.8
    override_settings: dict[str, Any] = {}
    enable_hr: bool = False
    restore_faces: bool | None = False
    tiling: bool | None = False
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] = {}
    subseed_strength: float = 0.0

    @field_validator(*UNSUPPORTED)
    @classmethod
    def _refuse_unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value not in (UNSUPPORTED[info.field_name], None):
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(min_length=1, description="base64 images; the first is used")
    mask: str | None = Field(None, description="base64 mask, white = repaint")
    denoising_strength: Strength = 0.75
    mask_blur: Annotated[int, Field(ge=0, le=64)] = 4
    inpainting_mask_invert: Annotated[int, Field(ge=0, le=1)] = 0


class Txt2ImgResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class OptionsUpdate(BaseModel, extra="allow"):
    sd_model_checkpoint: str | None = None


def _scheduler(body: Txt2ImgRequest) -> str | None:
    """A1111 splits sampler and sigma schedule ("DPM++ 2M" + "Karras"); ssdxl names them together."""
    if body.sampler_name is None:
        return None
    suffix = SIGMA_SCHEDULES.get((body.scheduler or "automatic").lower())
    if suffix is None:
        raise FieldError("scheduler", f"unknown schedule {body.scheduler!r}; use Automatic, Karras or Exponential")
    name = body.sampler_name if body.sampler_name.endswith(suffix) else body.sampler_name + suffix
    try:
        return resolve_scheduler(name).name
    except UserError as exc:
        raise FieldError("sampler_name", str(exc)) from None


def to_generation_request(body: Txt2ImgRequest) -> GenerationRequest:
    if body.batch_size * body.n_iter > MAX_SAMPLES:
        raise FieldError("batch_size", f"batch_size x n_iter must be at most {MAX_SAMPLES}")
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
        refiner=body.refiner_checkpoint is not None,
        high_noise_fraction=body.refiner_switch_at,
    )
    if isinstance(body, Img2ImgRequest):
        request.init_image = decode_image("init_images", body.init_images[0])
        request.strength = body.denoising_strength
        if body.mask:
            mask = decode_image("mask", body.mask).convert("L")
            if body.inpainting_mask_invert:
                mask = mask.point(lambda v: 255 - v)
            request.mask_image = mask.filter(ImageFilter.GaussianBlur(body.mask_blur)) if body.mask_blur else mask
    return request


def _current_model(service: JobService, caller: ApiKey | None) -> str:
    chosen = service.store.meta(_model_setting(caller))
    return chosen if chosen in service.registry.sources else service.registry.default


def _model_setting(caller: ApiKey | None) -> str:
    return f"a1111.sd_model_checkpoint.{caller.id if caller else 'all'}"


async def _generate(body: Txt2ImgRequest, request: Request) -> Txt2ImgResponse:
    service: JobService = request.app.state.service
    caller = request_key(request)
    model = body.override_settings.get("sd_model_checkpoint") or _current_model(service, caller)
    generation = to_generation_request(body)
    images = await service.run(generation, model=model, caller=caller)
    info = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "seed": images[0].seed,
        "all_seeds": [i.seed for i in images],
        "all_prompts": [body.prompt] * len(images),
        "infotexts": [i.infotext for i in images],
        "sd_model_name": model,
    }
    return Txt2ImgResponse(
        images=[base64.b64encode(i.path.read_bytes()).decode() for i in images],
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
async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
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
async def interrupt(request: Request) -> dict[str, Any]:
    """Stop the caller's running jobs at their next step (queued jobs stay queued)."""
    service: JobService = request.app.state.service
    caller = request_key(request)
    for job in service.store.recent(caller.id if caller else None, 100, status=RUNNING):
        service.store.cancel(job.id)
    return {}


@router.get("/sd-models")
async def sd_models(request: Request) -> list[dict[str, Any]]:
    names = request.app.state.service.registry.names()
    return [{"title": n, "model_name": n, "hash": None, "sha256": None, "filename": n, "config": None} for n in names]


@router.get("/samplers")
async def samplers() -> list[dict[str, Any]]:
    aliases = {s.name: list(s.aliases) for s in SAMPLERS}
    return [{"name": n, "aliases": aliases.get(n, []), "options": {}} for n in scheduler_names()]


@router.get("/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    return [{"name": n, "label": n.capitalize()} for n in SIGMA_SCHEDULES]


@router.get("/options")
async def get_options(request: Request) -> dict[str, Any]:
    return {"sd_model_checkpoint": _current_model(request.app.state.service, request_key(request))}


@router.post("/options")
async def set_options(body: OptionsUpdate, request: Request) -> dict[str, Any]:
    """Only ``sd_model_checkpoint`` is an option here; other keys are accepted and ignored."""
    service: JobService = request.app.state.service
    if body.sd_model_checkpoint is not None:
        name = service.registry.check(body.sd_model_checkpoint, field="sd_model_checkpoint")
        service.store.set_meta(_model_setting(request_key(request)), name)
    return {}


A1111_LORA_METADATA = ("hash", "format", "rank", "parts", "base_model", "few_step", "error")


@router.get("/loras")
async def loras(request: Request) -> list[dict[str, Any]]:
    """The LoRAs ``<lora:name:weight>`` may call, in A1111's shape; ``path`` is the file name only."""
    listed = []
    for facts in lora_facts(request.app.state.service.registry.adapters):
        name = facts.pop("name")
        metadata = {k: facts[k] for k in A1111_LORA_METADATA if k in facts}
        listed.append({"name": name, "alias": name, "path": facts.get("file", name), "metadata": metadata})
    return listed


@router.post("/refresh-loras")
async def refresh_loras(request: Request) -> None:
    """Re-read the LoRA folders (A1111's button next to the Lora tab)."""
    request.app.state.service.registry.refresh_adapters()


@router.get("/embeddings")
async def embeddings(request: Request) -> dict[str, dict[str, Any]]:
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
async def refresh_embeddings(request: Request) -> None:
    """Re-read the embedding folders."""
    request.app.state.service.registry.refresh_adapters()
