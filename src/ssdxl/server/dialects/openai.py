"""OpenAI's Images API: ``POST /v1/images/generations`` and ``/v1/images/edits`` with a Bearer key.

The ``openai`` package works unchanged with ``OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY)``.
``model`` is a model name of this server; OpenAI's own names (dall-e-3, gpt-image-1...) mean the
default model. ``b64_json`` answers carry the image; ``url`` answers a signed link to this server.
``quality``, ``style``, ``user`` and the like are accepted and ignored. ssdxl's own settings
(``negative_prompt``, ``seed``, ``steps``, ``guidance_scale``, ``scheduler``, ``loras``,
``prompt_syntax``) can be sent too, e.g. through the package's ``extra_body``; ``<lora:name:weight>``
in the prompt works in both endpoints. In edits, as in OpenAI's API, the mask's fully transparent
pixels (else the image's own) mark where to paint; without transparency an edit is img2img.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ssdxl.sampling.limits import (
    MAX_GUIDANCE,
    MAX_PROMPT_CHARS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    check_side,
    parse_size,
)
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.adapters import parse_loras
from ssdxl.server.errors import FieldError
from ssdxl.server.schemas import (
    Guidance,
    Loras,
    NegativePrompt,
    Prompt,
    PromptSyntax,
    SchedulerName,
    Seed,
    Steps,
    decode_image,
)
from ssdxl.server.service import JobService, StoredImage

router = APIRouter(prefix="/v1/images", tags=["OpenAI"])

ResponseFormat = Literal["url", "b64_json"]
OutputFormat = Literal["png", "jpeg", "webp"]


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: Prompt
    model: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = 1
    size: str | None = Field(None, description="WIDTHxHEIGHT or auto (the model's native size)")
    response_format: ResponseFormat | None = None
    output_format: OutputFormat = "png"
    negative_prompt: NegativePrompt = ""
    seed: Seed = -1
    steps: Steps | None = None
    guidance_scale: Guidance | None = None
    scheduler: SchedulerName | None = None
    loras: Loras = []
    prompt_syntax: PromptSyntax = "a1111"


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat


def _size(text: str | None) -> tuple[int | None, int | None]:
    """OpenAI's ``size``: WIDTHxHEIGHT within the request limits; auto or left out: the model's own."""
    if text in (None, "auto"):
        return None, None
    width, height = parse_size(text, "size")
    for side in (width, height):
        check_side("size", side)
    return width, height


def to_generation_request(body: ImageGenerationRequest) -> GenerationRequest:
    width, height = _size(body.size)
    return GenerationRequest(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=width,
        height=height,
        steps=body.steps,
        guidance_scale=body.guidance_scale,
        scheduler=body.scheduler,
        seed=body.seed,
        samples=body.n,
        loras=parse_loras(body.loras),
        prompt_syntax=body.prompt_syntax,
    )


def _answer(request: Request, body: ImageGenerationRequest, images: list[StoredImage]) -> ImagesResponse:
    """OpenAI's answer: links, or the images read (and re-encoded for ``output_format``) from their files, in a
    thread."""
    service: JobService = request.app.state.service
    # dall-e models answered with links by default, newer ones with base64: keep each client's expectation
    fmt = body.response_format or ("url" if (body.model or "").startswith("dall-e") else "b64_json")
    data = []
    for image in images:
        if fmt == "url":
            data.append(ImageData(url=service.link(request, image.file)))
            continue
        encoded = image.data
        if body.output_format != "png":
            buffer = io.BytesIO()
            with Image.open(io.BytesIO(image.data)) as png:
                png.convert("RGB").save(buffer, format=body.output_format.upper())
            encoded = buffer.getvalue()
        data.append(ImageData(b64_json=base64.b64encode(encoded).decode()))
    return ImagesResponse(created=int(time.time()), data=data, output_format=body.output_format)


@router.post("/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def generations(body: ImageGenerationRequest, request: Request) -> ImagesResponse:
    service: JobService = request.app.state.service
    images = await service.run(to_generation_request(body), model=body.model, client=request)
    return await run_in_threadpool(_answer, request, body, images)


def _edit_mask(image: Image.Image, mask: Image.Image | None) -> Image.Image | None:
    """OpenAI marks the area to paint with alpha 0; ssdxl with white. None when nothing is transparent."""
    source = mask if mask is not None else image
    if "A" not in source.getbands() and source.mode != "P":
        if mask is not None:
            raise FieldError("mask", "the mask needs an alpha channel: transparent pixels mark the area to edit")
        return None
    alpha = source.convert("RGBA").getchannel("A")
    if alpha.getextrema()[0] > 0:
        return None
    return alpha.point(lambda a: 255 if a == 0 else 0).resize(image.size)


async def _upload(field: str, upload: UploadFile) -> Image.Image:
    return await run_in_threadpool(decode_image, field, await upload.read())


@router.post("/edits", response_model=ImagesResponse, response_model_exclude_none=True)
async def edits(
    request: Request,
    prompt: Annotated[str, Form(max_length=MAX_PROMPT_CHARS)],
    image: Annotated[UploadFile | None, File()] = None,
    image_list: Annotated[list[UploadFile] | None, File(alias="image[]")] = None,
    mask: Annotated[UploadFile | None, File()] = None,
    model: Annotated[str | None, Form()] = None,
    n: Annotated[int, Form(ge=1, le=MAX_SAMPLES)] = 1,
    size: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat | None, Form()] = None,
    output_format: Annotated[OutputFormat, Form()] = "png",
    negative_prompt: Annotated[str, Form(max_length=MAX_PROMPT_CHARS)] = "",
    seed: Annotated[int, Form(ge=-1, le=MAX_SEED - MAX_SAMPLES, description="-1 picks a random seed")] = -1,
    steps: Annotated[int | None, Form(ge=1, le=MAX_STEPS)] = None,
    guidance_scale: Annotated[float | None, Form(ge=0, le=MAX_GUIDANCE)] = None,
    scheduler: Annotated[str | None, Form(description="e.g. Euler, 'DPM++ 2M Karras'")] = None,
    prompt_syntax: Annotated[PromptSyntax, Form()] = "a1111",
) -> ImagesResponse:
    """Edit an uploaded image (multipart ``image``, or ``image[]`` as the newer clients send it)."""
    upload = image or (image_list[0] if image_list else None)
    if upload is None:
        raise FieldError("image", "an image file is required")
    try:
        body = ImageGenerationRequest(
            prompt=prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            output_format=output_format,
            negative_prompt=negative_prompt,
            seed=seed,
            steps=steps,
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            prompt_syntax=prompt_syntax,
        )
    except ValidationError as exc:  # a form value the JSON model refuses: the request's 422, never a 500
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    source = await _upload("image", upload)
    generation = to_generation_request(body)
    generation.init_image = await run_in_threadpool(source.convert, "RGB")
    drawn = await _upload("mask", mask) if mask is not None else None
    generation.mask_image = await run_in_threadpool(_edit_mask, source, drawn)
    service: JobService = request.app.state.service
    images = await service.run(generation, model=body.model, client=request)
    return await run_in_threadpool(_answer, request, body, images)
