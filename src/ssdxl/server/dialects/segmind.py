"""Segmind's hosted API: ``POST /v1/{model}`` with ``x-api-key``, answered with the image bytes.

The seeds' client code posts Segmind's fields (numbers often as strings) and opens
``response.content`` with PIL; with ``"base64": true`` the answer is ``{"image": <base64>}``.
``refiner`` is honoured when the model was registered with one (``--refiner NAME=PATH``) and
otherwise ignored, as SDXL clients send it by default; ``image`` + ``strength`` make it img2img.
ssdxl adds ``loras`` and ``prompt_syntax``; ``<lora:name:weight>`` in the prompt works too. ``style`` names one
prompt style (``GET /v2/styles``: Segmind's names such as ``anime`` or ``cinematic`` are built in); ``base``,
``none`` or empty is none.

``POST /v1/segmind-vega-rt-v1`` is Segmind's Vega RT (Vega with its LCM LoRA) with that API's own
fields and 4-step default. It is served when the server has a model of that name, e.g.
``--model segmind-vega-rt-v1=./vega --model-lora segmind-vega-rt-v1=./VegaRT.safetensors``: the LoRA
is bound to the name, so the base model is loaded once and shared with the plain Vega name.

Segmind's async API takes the same bodies: ``POST /v2/{model}`` stores the job and answers ``{"request_id",
"status": "QUEUED", "poll_url"}`` at once; ``GET /v2/requests/{id}/status`` gives QUEUED, PROCESSING, COMPLETED
(with signed image links, and the first image as base64 when the request asked for ``base64``) or FAILED (with
``error``); ``GET /v2/requests/{id}`` is the full result: that and the model, times, settings, infotexts, timings.
``POST /v2/{model}`` matches every one-segment ``/v2`` path, so ``async_router`` is included after every other
router and no model may be named like a native ``/v2`` route (``check_model_names``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute

from ssdxl.errors import UserError
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.adapters import parse_loras
from ssdxl.server.auth import request_key
from ssdxl.server.errors import FieldError, public_text
from ssdxl.server.schemas import (
    Fraction,
    Guidance,
    Loras,
    NegativePrompt,
    Prompt,
    PromptSyntax,
    SchedulerName,
    Seed,
    Side,
    Steps,
    Strength,
    decode_image,
)
from ssdxl.server.service import JobService, StoredImage
from ssdxl.server.store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job
from ssdxl.server.styles import accept_styles

router = APIRouter(tags=["Segmind"])
async_router = APIRouter(tags=["Segmind"])  # app.py includes it last: POST /v2/{model} must not shadow /v2/jobs

VEGA_RT = "segmind-vega-rt-v1"
VEGA_RT_STEPS = 4  # Segmind's default and minimum for Vega RT; an LCM runs without CFG
NO_STYLE = ("base", "none", "")  # what Segmind clients send for no style
VEGA_RT_QUEUE, MODEL_QUEUE = f"/v2/{VEGA_RT}", "/v2/{model}"  # Segmind's async submits
QUEUE_PATHS = (VEGA_RT_QUEUE, MODEL_QUEUE)  # their /v2 segments are model names, not reserved ones
STATUS_PATH = "/v2/requests/{request_id}/status"
RESULT_PATH = "/v2/requests/{request_id}"  # Segmind's "full async result"
AsBase64 = Annotated[bool, Query(alias="base64", description="add the first image as base64 JPEG")]
SegmindStatus = Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED"]
STATUSES: dict[str, SegmindStatus] = {
    QUEUED: "QUEUED",
    RUNNING: "PROCESSING",
    SUCCEEDED: "COMPLETED",
    FAILED: "FAILED",
    CANCELLED: "FAILED",
}


class SegmindRequest(BaseModel):
    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    samples: Annotated[int, Field(ge=1, le=4)] = 1
    scheduler: SchedulerName | None = None
    num_inference_steps: Steps | None = None
    guidance_scale: Guidance | None = None
    seed: Seed = -1
    img_width: Side | None = None
    img_height: Side | None = None
    base64: bool = False
    style: str = Field("base", description="a prompt style by name (GET /v2/styles); base, none or empty: none")
    refiner: bool = False
    high_noise_fraction: Fraction = 0.8
    strength: Strength | None = Field(None, description="img2img strength, used with image")
    image: str | None = Field(None, description="base64 init image (img2img)")
    loras: Loras = []
    prompt_syntax: PromptSyntax = "a1111"


class VegaRTRequest(BaseModel):
    """Segmind's Vega RT fields: a few-step (LCM) model, so no scheduler or guidance to choose."""

    prompt: Prompt
    negative_prompt: NegativePrompt = ""
    num_inference_steps: Annotated[int, Field(ge=4, le=10)] = VEGA_RT_STEPS
    seed: Seed = -1
    img_width: Side | None = None
    img_height: Side | None = None
    samples: Annotated[int, Field(ge=1, le=4)] = 1
    base64: bool = False


def to_generation_request(body: SegmindRequest, *, refiner_available: bool) -> GenerationRequest:
    return GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.img_width,
        height=body.img_height,
        steps=body.num_inference_steps,
        guidance_scale=body.guidance_scale,
        scheduler=body.scheduler,
        seed=body.seed,
        samples=body.samples,
        init_image=decode_image("image", body.image) if body.image is not None else None,  # "" is a 422, not txt2img
        strength=body.strength if body.image is not None else None,
        refiner=body.refiner and refiner_available,
        high_noise_fraction=body.high_noise_fraction,
        loras=parse_loras(body.loras),
        prompt_syntax=body.prompt_syntax,
        styles=[] if body.style.strip().lower() in NO_STYLE else [body.style.strip()],
    )


def _jpeg(image: StoredImage) -> bytes:
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(image.data)) as png:
        png.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _jpeg_base64(image: StoredImage) -> str:
    return base64.b64encode(_jpeg(image)).decode()


IMAGE_RESPONSES = {200: {"content": {"image/jpeg": {}}, "description": "the image, or JSON with base64: true"}}


def _service(request: Request) -> JobService:
    return request.app.state.service


def _vega_rt_request(body: VegaRTRequest, service: JobService) -> GenerationRequest:
    """Vega RT's request: 404 unless the server has a model of that name (it needs its LCM LoRA bound)."""
    if VEGA_RT not in service.registry.sources:
        message = (
            f"unknown model {VEGA_RT!r}; this server has: {', '.join(service.registry.names())} "
            f"(serve it with --model {VEGA_RT}=PATH --model-lora {VEGA_RT}=LCM_LORA)"
        )
        raise FieldError("model", message, status=404)
    return GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.img_width,
        height=body.img_height,
        steps=body.num_inference_steps,
        guidance_scale=1.0,  # a latent-consistency model: no classifier-free guidance
        scheduler="LCM",
        seed=body.seed,
        samples=body.samples,
    )


def _model_request(model: str, body: SegmindRequest, service: JobService) -> tuple[str, GenerationRequest]:
    """The registered model name and its request, styles checked: what ``/v1/{model}`` and ``/v2/{model}`` submit."""
    model = service.registry.check(model)
    generation = to_generation_request(body, refiner_available=service.registry.has_refiner(model))
    return model, accept_styles(generation, service.registry.styles, "style")


@router.post(f"/v1/{VEGA_RT}", responses=IMAGE_RESPONSES)
async def vega_rt(body: VegaRTRequest, request: Request) -> Response:
    """Segmind's Vega RT: Vega with its LCM LoRA, 4 steps by default; served when the server has a model of this
    name (``--model segmind-vega-rt-v1=VEGA --model-lora segmind-vega-rt-v1=VegaRT.safetensors``)."""
    service = _service(request)
    images = await service.run(_vega_rt_request(body, service), model=VEGA_RT, client=request)
    return await run_in_threadpool(_answer, images, base64_json=body.base64)


@router.post("/v1/{model}", responses=IMAGE_RESPONSES)
async def generate(model: str, body: SegmindRequest, request: Request) -> Response:
    """Generate with a model by name, e.g. ``/v1/ssd-1b``; the first image comes back as JPEG bytes."""
    service = _service(request)
    model, generation = await run_in_threadpool(_model_request, model, body, service)  # decodes an init image
    images = await service.run(generation, model=model, client=request)
    return await run_in_threadpool(_answer, images, base64_json=body.base64)


def _answer(images: list[StoredImage], *, base64_json: bool) -> Response:
    headers = {"X-Seed": str(images[0].seed)}
    if base64_json:
        encoded = [_jpeg_base64(image) for image in images]
        seeds = [image.seed for image in images]
        return JSONResponse({"image": encoded[0], "images": encoded, "seeds": seeds}, headers=headers)
    return Response(_jpeg(images[0]), media_type="image/jpeg", headers=headers)


# ---------------------------------------------------------------------- the async API: POST /v2/{model}, then poll


class Queued(BaseModel):
    request_id: str
    status: SegmindStatus
    poll_url: str = Field(description="the status URL; it carries ?base64=true when the request asked for base64")
    status_url: str = Field(description="the same URL, under the name Segmind's newer clients read")


class RequestStatus(BaseModel):
    request_id: str
    status: SegmindStatus
    images: list[str] | None = Field(None, description="COMPLETED: signed links to the PNGs, usable without a key")
    seeds: list[int] | None = Field(None, description="COMPLETED: each image's seed")
    image: str | None = Field(None, description="COMPLETED with base64=true: the first image as base64 JPEG")
    error: str | None = Field(None, description="FAILED: why (a failed or cancelled job)")


class RequestResult(RequestStatus):
    """The status and, once finished, everything the job recorded (what ``/v2/jobs/{id}`` shows, in Segmind's
    terms)."""

    model: str
    created_at: float = Field(description="when the request was accepted (Unix time)")
    started_at: float | None = None
    completed_at: float | None = None
    infotexts: list[str] | None = Field(None, description="COMPLETED: each image's A1111 infotext")
    params: dict | None = Field(None, description="the request as stored: every setting, defaults filled in")
    timings: dict | None = Field(None, description="COMPLETED: seconds per stage")
    warnings: list[str] | None = None


def _queued(job: Job, request: Request, *, base64_json: bool) -> Queued:
    """The submit answer; ``base64`` rides on the poll URL because the job's stored request has no room for it."""
    url = _service(request).base_url(request) + STATUS_PATH.format(request_id=job.id)
    url += "?base64=true" if base64_json else ""
    return Queued(request_id=job.id, status=STATUSES[job.status], poll_url=url, status_url=url)


@async_router.post(VEGA_RT_QUEUE, response_model=Queued)
def queue_vega_rt(body: VegaRTRequest, request: Request) -> Queued:
    """Vega RT as an async request: answered at once with the ``request_id`` to poll."""
    service = _service(request)
    job = service.submit(_vega_rt_request(body, service), model=VEGA_RT, caller=request_key(request))
    return _queued(job, request, base64_json=body.base64)


@async_router.post(MODEL_QUEUE, response_model=Queued)
def queue(model: str, body: SegmindRequest, request: Request) -> Queued:
    """``/v1/{model}``'s request, checked now and queued: answered at once with the ``request_id`` to poll."""
    service = _service(request)
    model, generation = _model_request(model, body, service)
    job = service.submit(generation, model=model, caller=request_key(request))
    return _queued(job, request, base64_json=body.base64)


@async_router.get(STATUS_PATH, response_model=RequestStatus, response_model_exclude_none=True)
def request_status(
    request_id: str,
    request: Request,
    as_base64: AsBase64 = False,
) -> RequestStatus:
    """An async request's status; 404 for another key's request, as for the native jobs."""
    service = _service(request)
    job = service.get(request_id, request_key(request))
    return _answer_for(RequestStatus(request_id=job.id, status=STATUSES[job.status]), job, request, as_base64)


@async_router.get(RESULT_PATH, response_model=RequestResult, response_model_exclude_none=True)
def request_result(
    request_id: str,
    request: Request,
    as_base64: AsBase64 = False,
) -> RequestResult:
    """An async request's full result: its status, links, seeds and infotexts, settings, timings and warnings."""
    job = _service(request).get(request_id, request_key(request))
    answer = RequestResult(
        request_id=job.id,
        status=STATUSES[job.status],
        model=job.model,
        created_at=job.created,
        started_at=job.started,
        completed_at=job.finished,
        params=job.request,
    )
    if job.status == SUCCEEDED:
        answer.infotexts = [image["infotext"] for image in job.result["images"]]
        answer.timings = job.result.get("timings")
        answer.warnings = job.result.get("warnings") or None
    return _answer_for(answer, job, request, as_base64)


def _answer_for(answer: RequestStatus, job: Job, request: Request, as_base64: bool) -> RequestStatus:
    """``answer`` with what the job's status adds: links and seeds (and the first image) once done, why it failed."""
    service = _service(request)
    if job.status == SUCCEEDED:
        stored = job.result["images"]
        answer.images = [service.link(request, image["file"]) for image in stored]
        answer.seeds = [image["seed"] for image in stored]
        answer.image = _jpeg_base64(service.images(job)[0]) if as_base64 else None  # bytes read only when asked
    elif job.status == FAILED:
        answer.error = public_text(job.error or "inference failed")
    elif job.status == CANCELLED:
        answer.error = f"request {job.id} was cancelled"
    return answer


def reserved_model_names(routes: Iterable[BaseRoute]) -> list[str]:
    """The first ``/v2/`` path segments of ``routes`` other than the Segmind models' own: names no model may take."""
    paths = [p for route in routes if (p := getattr(route, "path", "")).startswith("/v2/") and p not in QUEUE_PATHS]
    return sorted({segment for path in paths if not (segment := path.split("/")[2]).startswith("{")})


def check_model_names(names: Iterable[str], routes: Iterable[BaseRoute]) -> None:
    """Refuse (one line, at start-up) a model named like a native ``/v2`` route: ``POST /v2/{model}`` would miss it."""
    reserved = reserved_model_names(routes)
    taken = sorted(set(names) & set(reserved))
    if taken:
        raise UserError(
            f"--model {taken[0]}: the name is taken by the server's /v2/{taken[0]} route; "
            f"rename the model (reserved names: {', '.join(reserved)})"
        )
