"""Prompt styles on the server: the built-in styles plus ``--styles-file`` ones, expanded when a request is accepted,
and the list clients read (``GET /v2/styles``; A1111's ``GET /sdapi/v1/prompt-styles`` is in its dialect).

``accept_styles`` runs in each dialect before the job is stored, so an unknown name is a 422 naming that dialect's
field (``styles``, Segmind's ``style``). The stored prompts hold the styles (``styles_applied``) ahead of the LoRA tags
and embedding names ``adapters.accept`` reads from them, so runners and ``ssdxl worker`` processes need no styles
files; the names stay in the request for its infotext.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fastapi import APIRouter, Request

from ssdxl.conditioning.styles import Style, apply_styles
from ssdxl.errors import UserError
from ssdxl.sampling.limits import MAX_PROMPT_CHARS
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.errors import FieldError

router = APIRouter(tags=["Styles"])


def accept_styles(request: GenerationRequest, styles: Mapping[str, Style], field: str) -> GenerationRequest:
    """The request with its styles expanded into its prompts; a FieldError naming ``field`` for an unknown name or
    prompts the styles make longer than the server takes (how many styles: ``check_request``)."""
    if not request.styles or request.styles_applied:
        return request
    try:
        prompt, negative = apply_styles(request.prompt, request.negative_prompt, request.styles, styles)
    except UserError as exc:
        raise FieldError(field, str(exc)) from None
    for name, text in (("prompt", prompt), ("negative prompt", negative)):
        if len(text) > MAX_PROMPT_CHARS:
            raise FieldError(field, f"the styled {name} is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    return dataclasses.replace(request, prompt=prompt, negative_prompt=negative, styles_applied=True)


def style_list(styles: Mapping[str, Style]) -> list[dict[str, str]]:
    """Each style as A1111's ``/sdapi/v1/prompt-styles`` lists it: name, prompt template, negative prompt."""
    return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()]


@router.get("/v2/styles")
async def list_styles(request: Request) -> list[dict[str, str]]:
    """Prompt styles a request may name (``styles``), in order: built-in, then the server's ``--styles-file`` ones."""
    return style_list(request.app.state.service.registry.styles)
