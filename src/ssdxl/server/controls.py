"""ControlNets, IP-Adapters, the hires fix, outpainting and upscalers on the server: what a request may name and set,
checked when it is accepted, and the lists clients read.

Control models, IP-Adapters and upscalers are named by name only: a client's string is a key into the server's index
of the ``--controlnet-dir`` / ``--ip-adapter-dir`` / ``--upscaler-dir`` folders (``ModelRegistry.controls`` /
``ip_adapters()`` / ``upscalers()``), never a path; A1111's ``name [hash]`` spelling of a model is taken too.
Everything that can be wrong before a model is loaded — a unit's model name, image, preprocessor and its settings,
schedule window and union type; an image prompt's adapter and pictures; a hires pass's upscaler and size; an
outpaint's sides — is a 422 naming the field the client sent, when the request arrives. The hires second pass and
the outpaint canvas are held to the operator's side limit (``ssdxl serve --max-side``: ``registry.limits``) by the
same rules the engine applies with the shared one (``ssdxl.sampling.limits``: ``check_hires_size``, ``check_canvas``;
the canvas through ``check_request`` when the service accepts the job). A hires pass on a request that leaves its
size to the model's defaults is sized only when a runner resolves it against the model: a second pass over the
server's sides fails that job alone (``check_hires_size``), before it runs. A ControlNet or IP-Adapter
made for another architecture shows when a runner loads it against the model's UNet: that job fails alone (a 400 on
the synchronous APIs), as a LoRA for another architecture does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ssdxl.control import outpaint
from ssdxl.control.ip_adapter import load_ip_adapter
from ssdxl.control.models import UNION_TYPES, ControlLibrary
from ssdxl.control.preprocess import check_preprocessor, get_preprocessor
from ssdxl.errors import UserError
from ssdxl.sampling.engine import MAX_IMAGE_PROMPTS
from ssdxl.sampling.limits import MAX_SIDE, check_hires_size
from ssdxl.sampling.request import ControlUnit, GenerationRequest, ImagePrompt
from ssdxl.server.errors import FieldError, public_text
from ssdxl.upscale import LATENT_MODES

if TYPE_CHECKING:
    from ssdxl.server.registry import ModelRegistry

A1111_NAME = re.compile(r"^(?P<name>.*?)\s*\[[0-9a-fA-F]+\]$")  # "canny-xl [a1b2c3d4e5]", as A1111's lists show models

router = APIRouter(tags=["Control and upscaling"])


@dataclass(frozen=True)
class UnitFields:
    """What a dialect calls the parts of a control unit, so a 422 names the field the client sent."""

    model: str = "model"
    image: str = "image"
    preprocessor: str = "preprocessor"
    processor_res: str = "processor_res"
    threshold_a: str = "threshold_a"
    threshold_b: str = "threshold_b"
    end: str = "end"
    control_type: str = "control_type"


def known_name(name: str, known: Sequence[str], field: str, kind: str) -> str:
    """The server's name for ``name`` (or A1111's ``name [hash]``) among ``known``; a FieldError listing them."""
    match = A1111_NAME.match(name.strip())
    wanted = match["name"] if match else name.strip()
    if wanted not in known:
        raise FieldError(field, f"unknown {kind} {name!r}; this server has: {', '.join(known) or 'none'}")
    return wanted


def check_module(
    name: str, resolution: int | None, threshold_a: float | None, threshold_b: float | None, fields: Sequence[str]
) -> str:
    """The canonical name of preprocessor ``name``; a FieldError naming the setting at fault, in the order
    ``fields`` gives them: the module, its resolution, its first and its second threshold."""
    if needs_a_path(name):
        word = "preprocessor" if fields[0].endswith("preprocessor") else "module"
        message = (
            f"{name!r} needs a local depth estimator, which requests cannot name on this server: "
            f"send a depth map with {word} none"
        )
        raise FieldError(fields[0], message)
    settings: dict[str, Any] = {"resolution": None}
    added = ({}, {"resolution": resolution}, {"threshold_a": threshold_a}, {"threshold_b": threshold_b})
    canonical = name
    for field, more in zip(fields, added, strict=True):
        settings.update(more)
        try:
            canonical = check_preprocessor(name, **settings)
        except UserError as exc:
            raise FieldError(field, str(exc)) from None
    return canonical


def needs_a_path(name: str) -> bool:
    """Whether module ``name`` runs only with a local model folder (an unknown name is refused elsewhere, with why)."""
    try:
        return get_preprocessor(name).takes_model
    except UserError:
        return False


def accept_unit(
    unit: ControlUnit, library: ControlLibrary, field: str, names: UnitFields = UnitFields()
) -> ControlUnit:
    """The unit as it is stored: its model a name from the server's folders, its preprocessor's canonical name, every
    setting checked; a FieldError under ``field`` (the unit, e.g. ``controls.0``) otherwise."""
    model = known_name(unit.model, library.names(), f"{field}.{names.model}", "ControlNet")
    if unit.image is None:
        raise FieldError(f"{field}.{names.image}", "a control unit needs an image (a control map or a picture to map)")
    if unit.start >= unit.end:
        raise FieldError(f"{field}.{names.end}", f"must be above the start ({unit.start:g}); got {unit.end:g}")
    parts = (names.preprocessor, names.processor_res, names.threshold_a, names.threshold_b)
    preprocessor = check_module(
        unit.preprocessor, unit.processor_res, unit.threshold_a, unit.threshold_b, [f"{field}.{p}" for p in parts]
    )
    if unit.control_type is not None and unit.control_type not in UNION_TYPES:
        message = f"unknown control type {unit.control_type!r}; union models know: {', '.join(UNION_TYPES)}"
        raise FieldError(f"{field}.{names.control_type}", message)
    return dataclasses.replace(unit, model=model, preprocessor=preprocessor)


def accept_image_prompt(
    prompt: ImagePrompt, registry: ModelRegistry, model_field: str, images_field: str
) -> ImagePrompt:
    """The image prompt as it is stored: its adapter a name from the ``--ip-adapter-dir`` folders, 1 to
    ``MAX_IMAGE_PROMPTS`` pictures; a FieldError naming the field at fault otherwise. Whether the adapter fits the
    model shows when a runner loads it (that job fails alone)."""
    model = known_name(prompt.model, list(registry.ip_adapters()), model_field, "IP-Adapter")
    if not 1 <= len(prompt.images) <= MAX_IMAGE_PROMPTS:
        message = f"an image prompt needs 1 to {MAX_IMAGE_PROMPTS} pictures; got {len(prompt.images)}"
        raise FieldError(images_field, message)
    return dataclasses.replace(prompt, model=model)


def accept_hires(
    request: GenerationRequest, registry: ModelRegistry, field: str, upscaler_field: str
) -> GenerationRequest:
    """The request with its hires pass checked: txt2img without the refiner, an upscaler this server has (a latent
    mode, a filter or a model file, by name) and, when the second pass's size is known now (the first pass's size
    given, or both hires sides), a second pass within the server's sides (``registry.limits.max_side``); otherwise
    the runner checks it (``check_hires_size``, the same rule, on the resolved request)."""
    if request.init_image is not None or request.refiner:
        raise FieldError(field, "the hires fix is for txt2img without the refiner")
    hires = request.hires
    upscaler = {mode.lower(): mode for mode in LATENT_MODES}.get(hires.upscaler.strip().lower())
    if upscaler is None:
        try:
            upscaler = registry.upscaler(hires.upscaler, upscaler_field).name
        except FieldError as exc:
            raise FieldError(upscaler_field, f"{exc.reason}; or a latent mode: {', '.join(LATENT_MODES)}") from None
    request = dataclasses.replace(request, hires=dataclasses.replace(hires, upscaler=upscaler))
    if (request.width and request.height) or (hires.width and hires.height):
        check_hires_size(request, field, registry.limits.max_side)
    return request


def accept_outpaint(request: GenerationRequest, field: str, max_side: int = MAX_SIDE) -> GenerationRequest:
    """The request with its outpaint sides checked: an init image to grow, no mask, some growth and a grown canvas
    within ``max_side`` a side (the service's ``check_request`` holds the canvas to the operator's ``--max-side``
    too, under ``outpaint``, whatever ``max_side`` a dialect passes here)."""
    try:
        sides = outpaint.check_sides(request.outpaint, request.init_image, request.mask_image, max_side)
    except UserError as exc:
        raise FieldError(field, exc.reason if isinstance(exc, FieldError) else str(exc)) from None
    return dataclasses.replace(request, outpaint=sides)


# ---------------------------------------------------------------------- what the folders hold


def control_facts(library: ControlLibrary) -> list[dict[str, Any]]:
    """Each control model's name, file or folder name (never the server's path), kind and hash; one that cannot be
    used is listed with its ``error``. Hashing reads the files (once: hashes are cached), so call it off the loop."""
    facts = []
    for name in library.names():
        try:
            info = library.info(name)
        except (UserError, OSError) as exc:
            facts.append({"name": name, "error": public_text(str(exc)) if isinstance(exc, UserError) else "removed"})
            continue
        facts.append({"name": name, "file": info.path.name, "kind": info.kind, "hash": info.hash})
    return facts


def ip_adapter_facts(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Each IP-Adapter's name, file name, hash, variant (plain, plus, full) and image tokens; one that cannot be used
    (no image encoder beside it, not an IP-Adapter, a FaceID file) is listed with its ``error``. Reads the files'
    headers and hashes them (cached), so call it off the loop."""
    facts = []
    for name, path in registry.ip_adapters().items():
        try:
            info = load_ip_adapter(path)
        except (UserError, OSError) as exc:
            facts.append({"name": name, "file": path.name, "error": public_text(str(exc))})
            continue
        facts.append(
            {"name": name, "file": path.name, "hash": info.hash, "variant": info.variant, "tokens": info.tokens}
        )
    return facts


def upscaler_records(registry: ModelRegistry) -> list[dict[str, Any]]:
    """A1111's ``/sdapi/v1/upscalers`` records, with a model's file name where A1111 gives its path."""
    return [
        {**upscaler.record(), "model_path": upscaler.path.name if upscaler.path else None}
        for upscaler in registry.upscalers().values()
    ]


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.service.registry


@router.get("/v2/controlnets")
async def controlnets(request: Request) -> list[dict[str, Any]]:
    """ControlNets and T2I-Adapters a request's ``controls`` may name (``--controlnet-dir``)."""
    return await run_in_threadpool(control_facts, _registry(request).controls)


@router.get("/v2/ip-adapters")
async def ip_adapters(request: Request) -> list[dict[str, Any]]:
    """IP-Adapters a request's ``image_prompts`` may name (``--ip-adapter-dir``)."""
    return await run_in_threadpool(ip_adapter_facts, _registry(request))


@router.get("/v2/upscalers")
def upscalers(request: Request) -> dict[str, Any]:
    """What ``hires.upscaler`` may name: a latent mode, or an upscaler (built-in filters, ``--upscaler-dir`` files)."""
    return {"latent_modes": list(LATENT_MODES), "upscalers": upscaler_records(_registry(request))}
