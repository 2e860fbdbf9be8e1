"""AUTOMATIC1111's upscaling API: the Extras tab's single-image upscale, and the upscaler lists the hires fix uses.

``POST /sdapi/v1/extra-single-image`` makes ``image`` ``upscaling_resize`` times larger (``resize_mode`` 0) or
covers ``upscaling_resize_w`` x ``upscaling_resize_h`` with it (1; ``upscaling_crop`` then cuts the centre to exactly
that size), with ``upscaler_1`` and, blended in at ``extras_upscaler_2_visibility``, ``upscaler_2``: names from
``GET /sdapi/v1/upscalers``, never paths. As in A1111, ``upscaler_1`` "None" leaves the image as it is. Face
restoration is not here: a GFPGAN or CodeFormer visibility above 0 is a 422. A result over ``MAX_UPSCALE_SIDE`` a
side is a 422 naming the limit before any work starts; the work runs off the event loop, one at a time
(``JobService.tool``), and counts against the caller's rate limit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from starlette.concurrency import run_in_threadpool

from ssdxl.errors import UserError
from ssdxl.sampling.precision import pick_device
from ssdxl.server.auth import request_key
from ssdxl.server.controls import upscaler_records
from ssdxl.server.errors import FieldError
from ssdxl.server.schemas import decode_image, encode_png
from ssdxl.server.service import JobService
from ssdxl.upscale import LATENT_MODES, Upscaler, upscale_image
from ssdxl.upscale.image import target_size

router = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111"])

NO_UPSCALER = (None, "", "None")
MAX_EXTRAS_SCALE = 8.0  # A1111's "Resize" slider
Visibility = Annotated[float, Field(ge=0, le=1)]


class ExtrasSingleImageRequest(BaseModel):
    """A1111's ``/sdapi/v1/extra-single-image`` fields."""

    image: str = Field(description="base64 image (or data URL)")
    resize_mode: Literal[0, 1] = Field(0, description="0: by upscaling_resize; 1: to upscaling_resize_w x _h")
    show_extras_results: bool | None = Field(None, description="accepted and ignored")
    gfpgan_visibility: Visibility = Field(0, description="face restoration is not supported: only 0")
    codeformer_visibility: Visibility = Field(0, description="face restoration is not supported: only 0")
    codeformer_weight: float | None = Field(None, description="accepted and ignored")
    upscaling_resize: Annotated[float, Field(gt=0, le=MAX_EXTRAS_SCALE)] = 2.0
    upscaling_resize_w: Annotated[int, Field(ge=1)] = 512
    upscaling_resize_h: Annotated[int, Field(ge=1)] = 512
    upscaling_crop: bool = Field(True, description="resize_mode 1: cut the centre to exactly the size asked for")
    upscaler_1: str | None = Field("None", description="GET /sdapi/v1/upscalers; None: no upscaling")
    upscaler_2: str | None = Field("None", description="blended in at extras_upscaler_2_visibility")
    extras_upscaler_2_visibility: Visibility = 0.0
    upscale_first: bool | None = Field(None, description="accepted and ignored (upscaling is the only step here)")

    @field_validator("gfpgan_visibility", "codeformer_visibility")
    @classmethod
    def _no_face_restoration(cls, value: float, info: ValidationInfo) -> float:
        if value:
            raise ValueError(f"{info.field_name}: face restoration is not supported by this server; use 0")
        return value


class ExtrasResponse(BaseModel):
    html_info: str
    image: str


def _plan(body: ExtrasSingleImageRequest, image: Image.Image) -> tuple[float, tuple[int, int] | None]:
    """(the factor to upscale by, the size to cut the centre to or None); a 422 naming the field that makes the
    result larger than the upscalers' limit."""
    if body.resize_mode == 0:
        factor, field, crop = body.upscaling_resize, "upscaling_resize", None
    else:
        size = (body.upscaling_resize_w, body.upscaling_resize_h)
        factor = max(size[0] / image.width, size[1] / image.height)
        field, crop = "upscaling_resize_w", size if body.upscaling_crop else None
    try:
        target_size(image.size, factor, None, 1)
    except UserError as exc:
        raise FieldError(field, str(exc)) from None
    return factor, crop


def _upscaled(
    image: Image.Image,
    first: Upscaler,
    second: Upscaler | None,
    visibility: float,
    factor: float,
    crop: tuple[int, int] | None,
    device: str,
) -> Image.Image:
    """A1111's order: upscaler 1, upscaler 2 blended over it, then the centre cut."""
    result = upscale_image(image, first, factor, device=device)
    if second is not None:
        other = upscale_image(image, second, factor, device=device).convert(result.mode)
        result = Image.blend(result, other, visibility)
    if crop is not None:
        canvas = Image.new(result.mode, crop)
        canvas.paste(result, (crop[0] // 2 - result.width // 2, crop[1] // 2 - result.height // 2))
        result = canvas
    return result


@router.post("/extra-single-image", response_model=ExtrasResponse)
async def extra_single_image(body: ExtrasSingleImageRequest, request: Request) -> ExtrasResponse:
    """Upscale one image with the named upscalers (the Extras tab)."""
    service: JobService = request.app.state.service
    image = await run_in_threadpool(decode_image, "image", body.image)
    if body.upscaler_1 in NO_UPSCALER:
        return ExtrasResponse(html_info="", image=await run_in_threadpool(encode_png, image))
    first = service.registry.upscaler(body.upscaler_1, "upscaler_1")
    second = None
    if body.upscaler_2 not in NO_UPSCALER and body.extras_upscaler_2_visibility > 0:
        second = service.registry.upscaler(body.upscaler_2, "upscaler_2")
    factor, crop = _plan(body, image)
    device = str(pick_device(service.config.device))
    visibility = body.extras_upscaler_2_visibility
    result = await service.tool(
        request_key(request), lambda: encode_png(_upscaled(image, first, second, visibility, factor, crop, device))
    )
    return ExtrasResponse(html_info="", image=result)


@router.get("/upscalers")
def upscalers(request: Request) -> list[dict[str, Any]]:
    """The built-in filters and the ``--upscaler-dir`` models, in A1111's shape (``model_path``: the file name)."""
    return upscaler_records(request.app.state.service.registry)


@router.get("/latent-upscale-modes")
async def latent_upscale_modes() -> list[dict[str, str]]:
    """The hires fix's latent upscalers (``hr_upscaler``)."""
    return [{"name": name} for name in LATENT_MODES]
