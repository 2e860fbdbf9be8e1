"""Errors as JSON every client understands, with the offending field named.

One body serves all three dialects: ``detail`` (FastAPI's and AUTOMATIC1111's clients read it),
``error.message`` / ``error.param`` (the ``openai`` package reads these), and ``field``.
``UserError`` from the engine becomes 400; a ``FieldError`` or a failed validation 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ssdxl.errors import UserError


class FieldError(UserError):
    """A request field that parsed but cannot be used (undecodable image, unknown scheduler...)."""

    def __init__(self, field: str, message: str, *, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status  # 422; 404 where the field names something this server does not serve


def error_body(message: str, *, field: str | None = None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"detail": message, "field": field, "error": {"message": message, "type": kind, "param": field}}


def error_response(status: int, message: str, *, field: str | None = None, headers=None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_body(message, field=field, kind=kind), status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers that turn exceptions into the JSON above."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if part not in ("body", "query", "path", "form"))
        return error_response(422, f"{field or 'body'}: {first['msg']}", field=field or None)

    @app.exception_handler(FieldError)
    async def bad_field(_: Request, exc: FieldError) -> JSONResponse:
        return error_response(exc.status, str(exc), field=exc.field)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)
