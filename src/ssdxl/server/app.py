"""The FastAPI app: one engine queue behind three client dialects, the jobs API and the web page.

Middleware, outermost first: the body size limit (413), then API keys (401; 403 for a bad signed
link), then ``Idempotency-Key`` (a repeated job-making request gets its first job back). Jobs run
in a runner thread started with the app, or in ``ssdxl worker`` processes when a Redis URL is set;
stopping the app checkpoints the store's WAL, so a clean stop leaves every job in ``ssdxl.db``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ssdxl import __version__
from ssdxl.server import adapters, controls, errors, jobs_api, styles, web
from ssdxl.server.auth import AuthMiddleware, KeyStore, request_key
from ssdxl.server.config import ServerConfig
from ssdxl.server.dialects import a1111, controlnet, extras, openai, segmind
from ssdxl.server.dispatch import LocalDispatch, RedisDispatch
from ssdxl.server.errors import StoreOutage, error_response
from ssdxl.server.limits import BodySizeLimit, BodyTooLarge
from ssdxl.server.notify import JobNotifier
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.runner import Runner
from ssdxl.server.service import JobService
from ssdxl.server.storage import open_data
from ssdxl.server.store import IDEMPOTENCY, IdempotentRequest

log = logging.getLogger("ssdxl.server")
IDEMPOTENCY_HEADER = "idempotency-key"
JOBS_PATH = "/v2/jobs"

DESCRIPTION = """Text-to-image for the SDXL family. Three APIs over one job queue: Segmind
(`POST /v1/{model}`; async: `POST /v2/{model}`, then `GET /v2/requests/{id}/status`), AUTOMATIC1111
(`/sdapi/v1/...`, with sd-webui-controlnet's `/controlnet/...`) and
OpenAI (`/v1/images/...`), plus the native asynchronous jobs API (`/v2/jobs`). See docs/server.md."""


# Segmind's POST /v2/{model} comes last: the first match wins, so /v2/jobs and the other native routes stay theirs.
MODULES = (segmind, a1111, extras, controlnet, openai, jobs_api, adapters, controls, styles, web)
ROUTERS = (*(module.router for module in MODULES), segmind.async_router)


def create_app(config: ServerConfig) -> FastAPI:
    segmind.check_model_names(config.models, (route for router in ROUTERS for route in router.routes))
    store, storage = open_data(config)
    registry = ModelRegistry.from_config(config)
    notifier = JobNotifier()  # the in-process runner, or the workers' events through Redis, wake waiters with it
    if config.redis_url:
        dispatch = RedisDispatch(store, config.redis_url, poll=config.poll, notifier=notifier)
    else:
        runner = Runner(
            store,
            storage,
            registry,
            max_batch=config.max_batch,
            lease=config.lease,
            threads=config.threads,
            preview_every=config.preview_every,
            notifier=notifier,
        )
        dispatch = LocalDispatch(store, runner, poll=config.poll, batch_wait=config.batch_wait)

    keys = KeyStore(store.db)
    if keys.required() and not keys.any():
        log.warning(
            "API keys were configured for %s but none is left: every request is refused (401) until "
            "`ssdxl keys add` makes one (or `ssdxl keys open` lets requests in without keys)",
            store.db,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        dispatch.start()
        yield
        dispatch.stop()  # and checkpoints the WAL into ssdxl.db

    app = FastAPI(title="ssdxl", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service = JobService(store, storage, registry, dispatch, config, notifier)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(IdempotencyMiddleware, service=service)
    app.add_middleware(AuthMiddleware, keys=keys, storage=storage)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(StoreOutage)  # outermost of ours: a store read anywhere below answers 503, never 500
    return app


class IdempotencyMiddleware:
    """``Idempotency-Key`` on any POST that makes jobs: the same key from the same API key within 24 h gives the
    job it first made instead of a new one (``JobStore.add`` decides, in the job's own transaction).

    ``POST /v2/jobs`` answers a repeat at once: 200 with the original job and ``Idempotent-Replayed: true``; the
    synchronous APIs wait for the original job and answer with its images. The key reused with another body is
    a 422. Runs inside ``AuthMiddleware``, so the caller's key is known.
    """

    def __init__(self, app: ASGIApp, service: JobService):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = Headers(scope=scope).get(IDEMPOTENCY_HEADER) if scope["type"] == "http" else None
        if key is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        key = key.strip()
        if not 1 <= len(key) <= 255:
            return await _refuse(422, "Idempotency-Key: must be 1 to 255 characters", scope, receive, send)
        try:
            body = await _read_body(receive)
        except BodyTooLarge as exc:
            return await error_response(413, exc.detail)(scope, receive, send)
        request = Request(scope)
        caller = request_key(request)
        owner = caller.id if caller else None
        digest = hashlib.sha256(scope["path"].encode() + b"?" + scope.get("query_string", b"") + b"\n" + body)
        fingerprint = digest.hexdigest()
        found = await run_in_threadpool(self.service.store.idempotent, owner, key)
        if found is not None:
            job, first = found
            if first != fingerprint:
                message = f"Idempotency-Key: {key!r} was already used for a different request"
                return await _refuse(422, message, scope, receive, send)
            if scope["path"] == JOBS_PATH:
                view = (await run_in_threadpool(self.service.view, job, request)).model_dump(mode="json")
                headers = {"Idempotent-Replayed": "true"}
                return await JSONResponse(view, status_code=200, headers=headers)(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = IDEMPOTENCY.set(IdempotentRequest(owner, key, fingerprint))
        try:
            await self.app(scope, replay, send)
        finally:
            IDEMPOTENCY.reset(token)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _refuse(status: int, message: str, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(status, message, field="Idempotency-Key")(scope, receive, send)
