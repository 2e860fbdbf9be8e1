"""The web page at ``/``: plain HTML, CSS and JavaScript files served as they are (no build step).

The page talks to the jobs API like any client: ``GET /v2/models``, ``GET /v2/styles`` (the style picker),
``GET /v2/loras`` and ``/v2/embeddings`` (the LoRA picker, the embedding hints), ``/v2/controlnets``,
``/controlnet/module_list``, ``/v2/ip-adapters`` and ``/v2/upscalers`` (the Control, Image prompt and Hires fix
sections), ``POST /v2/jobs``, then the job's server-sent events for progress and previews, and ``GET /v2/jobs`` for
the gallery.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

WEB_DIR = Path(__file__).parent / "web"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, f"no asset {name!r}")
    return FileResponse(WEB_DIR / name, media_type=ASSETS[name])
