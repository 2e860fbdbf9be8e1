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
"""

from __future__ import annotations

import base64
import io
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, Field

from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.adapters import parse_loras
from ssdxl.server.auth import request_key
from ssdxl.server.errors import FieldError
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
from ssdxl.server.styles import accept_styles

router = APIRouter(tags=["Segmind"])

VEGA_RT = "segmind-vega-rt-v1"
VEGA_RT_STEPS = 4  # Segmind's default and minimum for Vega RT; an LCM runs without CFG
NO_STYLE = ("base", "none", "")  # what Segmind clients send for no style


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
    with Image.open(image.path) as png:
        png.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


IMAGE_RESPONSES = {200: {"content": {"image/jpeg": {}}, "description": "the image, or JSON with base64: true"}}


@router.post(f"/v1/{VEGA_RT}", responses=IMAGE_RESPONSES)
async def vega_rt(body: VegaRTRequest, request: Request) -> Response:
    """Segmind's Vega RT: Vega with its LCM LoRA, 4 steps by default; served when the server has a model of this
    name (``--model segmind-vega-rt-v1=VEGA --model-lora segmind-vega-rt-v1=VegaRT.safetensors``)."""
    service: JobService = request.app.state.service
    if VEGA_RT not in service.registry.sources:
        message = (
            f"unknown model {VEGA_RT!r}; this server has: {', '.join(service.registry.names())} "
            f"(serve it with --model {VEGA_RT}=PATH --model-lora {VEGA_RT}=LCM_LORA)"
        )
        raise FieldError("model", message, status=404)
    generation = GenerationRequest(
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
    images = await service.run(generation, model=VEGA_RT, caller=request_key(request))
    return _answer(images, base64_json=body.base64)


@router.post("/v1/{model}", responses=IMAGE_RESPONSES)
async def generate(model: str, body: SegmindRequest, request: Request) -> Response:
    """Generate with a model by name, e.g. ``/v1/ssd-1b``; the first image comes back as JPEG bytes."""
    service: JobService = request.app.state.service
    model = service.registry.check(model)
    generation = to_generation_request(body, refiner_available=service.registry.has_refiner(model))
    generation = accept_styles(generation, service.registry.styles, "style")
    images = await service.run(generation, model=model, caller=request_key(request))
    return _answer(images, base64_json=body.base64)


def _answer(images: list[StoredImage], *, base64_json: bool) -> Response:
    headers = {"X-Seed": str(images[0].seed)}
    if base64_json:
        encoded = [base64.b64encode(_jpeg(image)).decode() for image in images]
        seeds = [image.seed for image in images]
        return JSONResponse({"image": encoded[0], "images": encoded, "seeds": seeds}, headers=headers)
    return Response(_jpeg(images[0]), media_type="image/jpeg", headers=headers)
