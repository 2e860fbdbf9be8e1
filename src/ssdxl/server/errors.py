"""Errors as JSON every client understands, with the offending field named; a job store that is away is a 503.

One body serves all three dialects. A 422 is FastAPI's validation error body — ``detail`` is a list
of ``{"loc", "msg", "type"}``, as the OpenAPI schema says and FastAPI/AUTOMATIC1111 clients expect —
plus ``field`` (the first bad field, dotted) and OpenAI's ``error`` (``message``, ``type``, ``param``:
what the ``openai`` package reads). Other errors carry ``detail`` as a string (FastAPI's
``HTTPException`` shape), ``field`` and ``error``. ``UserError`` from the engine becomes 400; a
``FieldError`` or a failed validation 422. Messages never show the server's file paths: an absolute
path becomes its file name (``public_text``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssdxl.errors import FieldError, UserError  # FieldError: request fields, also the engine's
from ssdxl.server.db import StoreUnavailable

STORE_RETRY_AFTER = "5"  # seconds a client is asked to wait while the job store (PostgreSQL) is away

LOCATIONS = ("body", "query", "path", "form", "header")


# ---------------------------------------------------------------------- no server paths in answers

API_PREFIXES = ("/v1/", "/v2/", "/sdapi/", "/controlnet/", "/docs", "/redoc", "/openapi", "/health")
_SEGMENT = r"[^\s/\\'\"`:,;()<>\[\]{}|]+"
_POSIX_PATH = re.compile(rf"(?<![\w/.:~\\-])(?:~)?(/(?:{_SEGMENT}/)+)({_SEGMENT})?")
_WINDOWS_PATH = re.compile(rf"(?<![\w])[A-Za-z]:\\(?:{_SEGMENT}\\)*({_SEGMENT})?")


def public_text(text: str, roots: Iterable[str | Path] = ()) -> str:
    """``text`` with absolute file paths replaced by their last part (the file or folder name).

    ``roots`` are folders known to hold server files (data dir, model and adapter folders): paths under
    them are found even with spaces in them. API routes (``/v2/jobs/...``) are left alone.
    """
    absolute = {str(r).rstrip("/\\") for r in (*roots, *KNOWN_ROOTS) if str(r).startswith(("/", "~")) or _is_drive(r)}
    for root in sorted(absolute, key=len, reverse=True):  # the longest first: a model file inside the data dir
        if len(root) > 1:
            pattern = re.escape(root) + r"(?:[/\\][^/\\'\"\n:]*)*(?![^/\\\s'\":,;)\]}])"
            text = re.sub(pattern, _last_part, text)
    text = _POSIX_PATH.sub(_posix_name, text)
    return _WINDOWS_PATH.sub(lambda m: m.group(1) or "", text)


KNOWN_ROOTS: set[str] = set()  # the folders of the servers made in this process (``install``)


def _is_drive(root: str | Path) -> bool:
    return bool(re.match(r"^[A-Za-z]:\\", str(root)))


def _last_part(match: re.Match) -> str:
    return re.split(r"[/\\]", match.group(0).rstrip("/\\"))[-1] or match.group(0)


def _posix_name(match: re.Match) -> str:
    whole = match.group(0)
    if whole.startswith(API_PREFIXES):
        return whole
    return match.group(2) or match.group(1).rstrip("/").rsplit("/", 1)[-1]


def _server_roots(where: Request | FastAPI | None) -> list[str]:
    """The folders this server reads and writes, from its config (when there is one)."""
    app = where if isinstance(where, FastAPI) else getattr(where, "app", None)
    service = getattr(getattr(app, "state", None), "service", None)
    config = getattr(service, "config", None)
    if config is None:
        return [str(Path.home())]
    roots = [config.data_dir, *config.lora_dirs, *config.embedding_dirs, *config.controlnet_dirs, *config.upscaler_dirs]
    roots += config.ip_adapter_dirs
    roots.append(Path.home())
    roots += [*config.models.values(), *config.refiners.values()]
    roots += [path for loras in config.model_loras.values() for path, _ in loras]
    found = []
    for root in roots:
        found.append(str(root))
        with contextlib.suppress(OSError, RuntimeError):
            found.append(str(Path(root).expanduser().resolve()))
    return found


# ---------------------------------------------------------------------- bodies


def field_loc(field: str | None) -> list[str | int]:
    """A dotted field name as a FastAPI ``loc``: ``override_settings.sd_model_checkpoint`` ->
    ``["body", "override_settings", "sd_model_checkpoint"]``."""
    return ["body", *(field.split(".") if field else [])]


def error_body(
    message: str,
    *,
    field: str | None = None,
    kind: str = "invalid_request_error",
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON of an error. With ``errors`` (FastAPI's ``{loc, msg, type}`` items) ``detail`` is that list."""
    detail: str | list[dict[str, Any]] = message if errors is None else errors
    return {"detail": detail, "field": field, "error": {"message": message, "type": kind, "param": field}}


def error_response(
    status: int,
    message: str,
    *,
    field: str | None = None,
    headers=None,
    errors: list[dict[str, Any]] | None = None,
    roots: Iterable[str | Path] = (),
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    message = public_text(message, roots)
    if status == 422 and errors is None:
        errors = [{"loc": field_loc(field), "msg": message, "type": "value_error"}]
    if errors is not None:
        errors = [{**item, "msg": public_text(item["msg"], roots)} for item in errors]
    body = error_body(message, field=field, kind=kind, errors=errors)
    return JSONResponse(body, status_code=status, headers=headers)


def validation_items(errors: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic/FastAPI errors as ``{loc, msg, type}`` only: no ``input`` echoed (a base64 image, a secret)."""
    return [{"loc": list(e["loc"]), "msg": str(e["msg"]), "type": str(e["type"])} for e in errors]


def dotted_field(loc: Iterable[str | int]) -> str | None:
    parts = list(loc)
    if parts and parts[0] in LOCATIONS:
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or None


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the JSON above, and describe it in the OpenAPI schema."""
    KNOWN_ROOTS.update(_server_roots(app))  # so texts shown outside these handlers (a job's error) lose them too

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        items = validation_items(exc.errors())
        first = items[0] if items else {"loc": ["body"], "msg": "invalid request", "type": "value_error"}
        field = None if first["type"] == "json_invalid" else dotted_field(first["loc"])
        message = f"{field or 'body'}: {first['msg']}"
        return error_response(422, message, field=field, errors=items, roots=_server_roots(request))

    @app.exception_handler(FieldError)
    async def bad_field(request: Request, exc: FieldError) -> JSONResponse:
        errors = None
        if exc.status == 422:
            errors = [{"loc": field_loc(exc.field), "msg": exc.reason, "type": "value_error"}]
        return error_response(exc.status, str(exc), field=exc.field, errors=errors, roots=_server_roots(request))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return error_response(400, str(exc), roots=_server_roots(request))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers, roots=_server_roots(request))

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        # the traceback goes to the server's log (Starlette re-raises after answering); the client gets no text
        # that could show the server's paths or data
        return error_response(500, f"internal server error ({type(exc).__name__})")

    _describe_errors(app)


# ---------------------------------------------------------------------- the OpenAPI schema says what is returned

ERROR_INFO = {
    "title": "ErrorInfo",
    "type": "object",
    "description": "OpenAI's error object (read by the openai package)",
    "properties": {
        "message": {"type": "string", "title": "Message"},
        "type": {"type": "string", "title": "Type", "examples": ["invalid_request_error"]},
        "param": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Param"},
    },
    "required": ["message", "type", "param"],
}
VALIDATION_ERROR = {
    "title": "ValidationError",
    "type": "object",
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "title": "Location"},
        "msg": {"type": "string", "title": "Message"},
        "type": {"type": "string", "title": "Error Type"},
    },
    "required": ["loc", "msg", "type"],
}
FIELD = {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Field", "description": "the first bad field"}
HTTP_VALIDATION_ERROR = {
    "title": "HTTPValidationError",
    "type": "object",
    "description": "422: a request field is invalid; detail lists every problem found",
    "properties": {
        "detail": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}, "title": "Detail"},
        "field": FIELD,
        "error": {"$ref": "#/components/schemas/ErrorInfo"},
    },
    "required": ["detail", "field", "error"],
}
HTTP_ERROR = {
    "title": "HTTPError",
    "type": "object",
    "description": "every other error: 400 (the engine refused the request), 401, 403, 404, 409, 413, 429, 5xx",
    "properties": {
        "detail": {"type": "string", "title": "Detail"},
        "field": FIELD,
        "error": {"$ref": "#/components/schemas/ErrorInfo"},
    },
    "required": ["detail", "field", "error"],
}


def _json_ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _describe_errors(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(
            ErrorInfo=ERROR_INFO,
            ValidationError=VALIDATION_ERROR,
            HTTPValidationError=HTTP_VALIDATION_ERROR,
            HTTPError=HTTP_ERROR,
        )
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                responses = operation["responses"]
                if operation.get("requestBody") or operation.get("parameters"):
                    responses["422"] = {"description": "Validation Error", "content": _json_ref("HTTPValidationError")}
                responses.setdefault("4XX", {"description": "Client error", "content": _json_ref("HTTPError")})
                responses.setdefault("5XX", {"description": "Server error", "content": _json_ref("HTTPError")})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


class StoreOutage:
    """Answers 503 with ``Retry-After`` when the job store cannot be reached (PostgreSQL restarting, for longer than
    the store waits): from a route or from a middleware's store read alike. What the request asked for was not
    recorded, or its outcome is unknown, so a retry (with an ``Idempotency-Key`` for job creation) is safe."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except StoreUnavailable as exc:
            if started or scope["type"] != "http":
                raise
            logging.getLogger("ssdxl.server").warning("%s %s: %s", scope.get("method"), scope.get("path"), exc)
            headers = {"Retry-After": STORE_RETRY_AFTER}
            await error_response(503, "the job store is unavailable; retry shortly", headers=headers)(
                scope, receive, send
            )
