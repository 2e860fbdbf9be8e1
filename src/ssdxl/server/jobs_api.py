"""The native asynchronous API: submit a job, follow it (JSON or server-sent events), cancel it.

``POST /v2/jobs`` answers at once (202) with the job; ``GET /v2/jobs/{id}`` gives status, queue
position, step progress and, when done, signed links to the images; ``GET /v2/jobs/{id}/events``
streams the same as server-sent events with the latest latent preview, woken by the runner's progress (``service
.notifier``) rather than polling; ``DELETE`` cancels (a running job stops at its next step). Also here: result files,
the model list, ``/health``. Handlers that touch the store or images are plain functions: FastAPI runs them in its
thread pool, off the event loop.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException

from ssdxl.sampling.limits import MAX_PROMPT_CHARS, MIN_SIDE
from ssdxl.sampling.request import ControlUnit, GenerationRequest, Hires, ImagePrompt
from ssdxl.sampling.schedulers import scheduler_names
from ssdxl.server.adapters import parse_loras
from ssdxl.server.auth import request_key
from ssdxl.server.controls import accept_hires, accept_image_prompt, accept_outpaint, accept_unit
from ssdxl.server.errors import FieldError
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.schemas import JobRequest, JobView, LimitsView, ModelsView, decode_image
from ssdxl.server.service import JobService
from ssdxl.server.store import Job
from ssdxl.server.styles import accept_styles

router = APIRouter(tags=["Jobs"])

KEEPALIVE = 15.0  # seconds between comments that keep idle proxies from closing the stream


def to_generation_request(body: JobRequest, registry: ModelRegistry) -> GenerationRequest:
    """The job as the engine's request; control models, IP-Adapters and upscalers are checked against ``registry``'s
    folders."""
    images = {"init_image", "mask_image", "controls", "image_prompts"}
    fields = body.model_dump(exclude={"model", "loras", "hires", "outpaint", *images})
    request = GenerationRequest(
        **fields,
        loras=parse_loras(body.loras),
        init_image=decode_image("init_image", body.init_image) if body.init_image is not None else None,
        mask_image=decode_image("mask_image", body.mask_image) if body.mask_image is not None else None,
    )
    request = accept_styles(request, registry.styles, "styles")
    name = body.model or registry.default  # an unknown name is refused on its own field
    if request.fast_decode and name in registry.sources and not registry.has_tiny_vae(name):
        raise FieldError("fast_decode", f"model {name!r} has no tiny VAE (the server's --model-tiny-vae)")
    for k, unit in enumerate(body.controls):
        image = decode_image(f"controls.{k}.image", unit.image)
        unit = ControlUnit(**unit.model_dump(exclude={"image"}), image=image)
        request.controls.append(accept_unit(unit, registry.controls, f"controls.{k}"))
    for k, prompt in enumerate(body.image_prompts):
        field = f"image_prompts.{k}"
        pictures = [decode_image(f"{field}.images.{i}", data) for i, data in enumerate(prompt.images)]
        image_prompt = ImagePrompt(prompt.model, pictures, prompt.scale)
        request.image_prompts.append(accept_image_prompt(image_prompt, registry, f"{field}.model", f"{field}.images"))
    if body.hires is not None:
        hires = body.hires
        request.hires = Hires(
            scale=hires.scale,
            width=hires.width or None,
            height=hires.height or None,
            upscaler=hires.upscaler,
            steps=hires.steps or None,
            strength=hires.strength,
        )
        request = accept_hires(request, registry, "hires", "hires.upscaler")
    if body.outpaint is not None:
        request.outpaint = (body.outpaint.left, body.outpaint.top, body.outpaint.right, body.outpaint.bottom)
        request = accept_outpaint(request, "outpaint")
    return request


def _service(request: Request) -> JobService:
    return request.app.state.service


@router.post("/v2/jobs", status_code=202, response_model=JobView)
def submit(body: JobRequest, request: Request) -> JobView:
    service = _service(request)
    generation = to_generation_request(body, service.registry)
    job = service.submit(generation, model=body.model, caller=request_key(request))
    return service.view(job, request)


@router.get("/v2/jobs", response_model=list[JobView])
def recent(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[JobView]:
    """The caller's newest jobs first (the web page's gallery)."""
    service = _service(request)
    caller = request_key(request)
    return [service.view(job, request) for job in service.store.recent(caller.id if caller else None, limit)]


@router.get("/v2/jobs/{job_id}", response_model=JobView)
def status(job_id: str, request: Request) -> JobView:
    service = _service(request)
    return service.view(service.get(job_id, request_key(request)), request)


@router.delete("/v2/jobs/{job_id}", response_model=JobView)
def cancel(job_id: str, request: Request) -> JobView:
    service = _service(request)
    service.get(job_id, request_key(request))
    return service.view(service.cancel(job_id), request)


@router.get("/v2/jobs/{job_id}/events", response_class=StreamingResponse)
async def events(job_id: str, request: Request) -> StreamingResponse:
    """Server-sent events: ``progress`` (status, position, step, preview data URL) until ``done`` (the job)."""
    service = _service(request)
    job = await anyio.to_thread.run_sync(service.get, job_id, request_key(request))
    return StreamingResponse(_follow(service, job.id, request), media_type="text/event-stream")


async def _follow(service: JobService, job_id: str, request: Request) -> AsyncIterator[str]:
    last = None
    quiet_since = time.monotonic()
    with service.notifier.watch(job_id) as watch:  # before reading: a change after the read still wakes it
        while not await request.is_disconnected():
            job, position = await anyio.to_thread.run_sync(_state, service, job_id)
            if job.done:
                yield _event("done", (await anyio.to_thread.run_sync(service.view, job, request)).model_dump())
                return
            state = (job.status, position, job.step, job.total)
            if state != last:
                preview = f"data:image/png;base64,{base64.b64encode(job.preview).decode()}" if job.preview else None
                names = ("status", "position", "step", "total")
                yield _event("progress", {"id": job.id, **dict(zip(names, state, strict=True)), "preview": preview})
                last, quiet_since = state, time.monotonic()
            elif time.monotonic() - quiet_since >= KEEPALIVE:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await watch.wait(min(service.config.poll, KEEPALIVE))


def _state(service: JobService, job_id: str) -> tuple[Job, int]:
    """A followed job and its queue position, read together in one trip to the thread pool."""
    job = service.store.get(job_id)
    return job, service.store.position(job)


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.get("/v2/files/{name}", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def file(name: str, request: Request) -> Response:
    """A stored image: with the caller's key (its own jobs), or with a link's valid signature."""
    service = _service(request)
    try:
        service.storage.check(name)
    except ValueError:
        raise HTTPException(404, f"no file {name!r}") from None
    query = request.query_params
    signed = service.storage.verify(name, query.get("expires", ""), query.get("signature", ""))
    caller = request_key(request)
    if not signed and caller is not None:
        service.get(name.partition("-")[0], caller)  # 404 unless it is the caller's own job
    data = service.storage.read(name)
    if data is None:
        raise HTTPException(404, f"no file {name!r}")
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"})


@router.get("/v2/models", response_model=ModelsView)
def models(request: Request) -> ModelsView:
    registry, limits = _service(request).registry, _service(request).config.limits
    return ModelsView(
        models=registry.names(),
        families=registry.families(),
        fast_decode=[name for name in registry.names() if registry.has_tiny_vae(name)],
        default=registry.default,
        schedulers=scheduler_names(),
        limits=LimitsView(min_side=MIN_SIDE, max_prompt_chars=MAX_PROMPT_CHARS, **dataclasses.asdict(limits)),
    )


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
