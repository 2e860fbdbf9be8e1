"""LoRAs and embeddings on the server: what a request may name, checked when it is accepted, and the lists clients read.

Clients name LoRAs in a ``loras`` field (``[{"name": "style", "weight": 0.8}]`` or ``[["style", 0.8]]``)
or, as AUTOMATIC1111 users do, with ``<lora:style:0.8>`` in the prompt; embeddings by writing their
name in a prompt. Names are looked up in the server's ``AdapterLibrary`` over the ``--lora-dir`` /
``--embedding-dir`` folders, built with ``allow_paths=False``: a client's string is only ever a key
into that index, never a path, so ``../../etc/passwd`` is an unknown name and no file is opened.

``accept`` runs in ``JobService.submit``, before a job is stored: an unknown name, a weight out of
range or a malformed prompt weight is a 422 for that request alone, never a failure inside a batch.
The stored request carries the names (tags moved out of the prompt); runners resolve them against
their engine's library over the same folders.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fastapi import APIRouter, Request

from ssdxl.adapters.library import AdapterLibrary, prompt_loras
from ssdxl.adapters.patching import MAX_LORAS
from ssdxl.errors import UserError
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.errors import FieldError, public_text

MAX_LORA_WEIGHT = 10.0

router = APIRouter(tags=["Adapters"])


def parse_loras(value: list[Any] | None, field: str = "loras") -> list[tuple[str, float]]:
    """A ``loras`` field as (name, weight) pairs: ``{"name": n, "weight": w}``, ``[n, w]``, ``[n]`` or ``n``."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise FieldError(field, 'must be a list such as [{"name": "style", "weight": 0.8}]')
    pairs = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            extra = set(item) - {"name", "weight"}
            if extra:
                raise FieldError(field, f"item {i}: unknown key(s) {', '.join(sorted(extra))}; use name and weight")
            name, weight = item.get("name"), item.get("weight", 1.0)
        elif isinstance(item, (list, tuple)) and 1 <= len(item) <= 2:
            name, weight = item[0], item[1] if len(item) == 2 else 1.0
        elif isinstance(item, str):
            name, weight = item, 1.0
        else:
            raise FieldError(field, f'item {i}: expected {{"name": ..., "weight": ...}} or [name, weight]')
        if not isinstance(name, str) or not name.strip():
            raise FieldError(field, f"item {i}: name must be a LoRA name from GET /v2/loras")
        pairs.append((name.strip(), _weight(weight, field, name)))
    return pairs


def _weight(value: Any, field: str, name: str) -> float:
    if isinstance(value, bool):
        value = None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise FieldError(field, f"LoRA {name!r}: weight {value!r} is not a number") from None
    if not math.isfinite(weight) or abs(weight) > MAX_LORA_WEIGHT:
        limit = f"{MAX_LORA_WEIGHT:g}"
        raise FieldError(field, f"LoRA {name!r}: weight {weight:g} is outside -{limit}..{limit}")
    return weight


def accept(request: GenerationRequest, library: AdapterLibrary) -> GenerationRequest:
    """The request as it is stored: ``<lora:..>`` tags moved from the prompt into ``loras``, every LoRA and
    embedding a known name, prompt weights parsed; a FieldError naming ``loras``, ``prompt`` or
    ``negative_prompt`` otherwise."""
    prompt, tagged = _without_tags(request.prompt)
    loras = [_known_lora(library, name, weight, "loras") for name, weight in request.loras]
    loras += [_known_lora(library, name, _weight(weight, "prompt", name), "prompt") for name, weight in tagged]
    if len(loras) > MAX_LORAS:
        raise FieldError("loras", f"at most {MAX_LORAS} LoRAs a request; got {len(loras)}")
    for field, text in (("prompt", prompt), ("negative_prompt", request.negative_prompt)):
        _check_syntax(field, text, request.prompt_syntax)
    named = library.embeddings_named_in(prompt, request.negative_prompt)
    embeddings = list(dict.fromkeys([*request.embeddings, *named]))
    for name in embeddings:
        try:
            library.embedding(name)  # unknown or unreadable: refused now
        except UserError as exc:
            raise FieldError("prompt", str(exc)) from None
        except OSError:
            raise FieldError("prompt", f"embedding {name!r} was removed from its folder") from None
    return dataclasses.replace(request, prompt=prompt, loras=loras, embeddings=embeddings)


def _without_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt with every ``<lora:..>`` tag taken out (``prompt_loras`` also takes the ones that only form
    once inner ones are gone): the stored prompt must hold none, or a runner would read one as given."""
    try:
        return prompt_loras(prompt)
    except UserError as exc:
        raise FieldError("prompt", str(exc)) from None


def _known_lora(library: AdapterLibrary, name: str, weight: float, field: str) -> tuple[str, float]:
    try:
        info = library.lora(name)  # a name from the folders, or UserError listing the names (no paths)
    except UserError as exc:
        raise FieldError(field, str(exc)) from None
    except OSError:  # removed since the folders were last read
        raise FieldError(field, f"LoRA {name!r} was removed from its folder") from None
    return info.name, weight


def _check_syntax(field: str, text: str, syntax: str) -> None:
    from ssdxl.conditioning.weighting import parse_prompt

    try:
        parse_prompt(text, syntax)
    except UserError as exc:
        raise FieldError(field, str(exc)) from None


# ---------------------------------------------------------------------- what the folders hold


def lora_facts(library: AdapterLibrary) -> list[dict[str, Any]]:
    """Each LoRA's name, file name (never the server's path), hash, format, rank, parts, base model and
    few-step kind; a file that cannot be used is listed with its ``error``."""
    facts = []
    for name in library.lora_names():
        try:
            info = library.lora(name)
        except (UserError, OSError) as exc:
            facts.append({"name": name, "error": public_text(str(exc)) if isinstance(exc, UserError) else "removed"})
            continue
        entry = info.as_dict()
        entry.pop("path")
        facts.append({"name": name, "file": info.path.name, **entry})
    return facts


def embedding_facts(library: AdapterLibrary) -> list[dict[str, Any]]:
    """Each embedding's name (what a prompt writes), file name, hash, vector count and widths per text encoder."""
    facts = []
    for name in library.embedding_names():
        try:
            embedding = library.embedding(name)
        except (UserError, OSError) as exc:
            facts.append({"name": name, "error": public_text(str(exc)) if isinstance(exc, UserError) else "removed"})
            continue
        widths = {tower: int(v.shape[-1]) for tower, v in embedding.vectors.items()}
        facts.append(
            {
                "name": name,
                "file": embedding.path.name,
                "hash": embedding.hash,
                "vectors": embedding.length,
                "widths": widths,
            }
        )
    return facts


def _library(request: Request) -> AdapterLibrary:
    return request.app.state.service.registry.adapters


@router.get("/v2/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    """LoRAs requests may name (``loras`` field or ``<lora:name:weight>`` in the prompt)."""
    return lora_facts(_library(request))


@router.get("/v2/embeddings")
def embeddings(request: Request) -> list[dict[str, Any]]:
    """Embeddings a prompt uses by writing their name (or ``embedding:name``)."""
    return embedding_facts(_library(request))


@router.post("/v2/adapters/refresh")
def refresh(request: Request) -> dict[str, list[str]]:
    """Re-read the LoRA and embedding folders (files added or removed since start-up)."""
    registry = request.app.state.service.registry
    registry.refresh_adapters()
    return {"loras": registry.adapters.lora_names(), "embeddings": registry.adapters.embedding_names()}
