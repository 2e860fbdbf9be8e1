"""The FastAPI app: one engine queue behind three client dialects, the jobs API and the web page.

Middleware, outermost first: the body size limit (413), then API keys (401). Jobs run in a
runner thread started with the app, or in ``ssdxl worker`` processes when a Redis URL is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ssdxl import __version__
from ssdxl.server import adapters, errors, jobs_api, web
from ssdxl.server.auth import AuthMiddleware, KeyStore
from ssdxl.server.config import ServerConfig
from ssdxl.server.dialects import a1111, openai, segmind
from ssdxl.server.dispatch import LocalDispatch, RedisDispatch
from ssdxl.server.limits import BodySizeLimit
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.runner import Runner
from ssdxl.server.service import JobService
from ssdxl.server.storage import open_data

DESCRIPTION = """Text-to-image for the SDXL family. Three APIs over one job queue: Segmind
(`POST /v1/{model}`), AUTOMATIC1111 (`/sdapi/v1/...`) and OpenAI (`/v1/images/...`), plus the
native asynchronous jobs API (`/v2/jobs`). See docs/server.md."""


def create_app(config: ServerConfig) -> FastAPI:
    store, storage = open_data(config)
    registry = ModelRegistry.from_config(config)
    if config.redis_url:
        dispatch = RedisDispatch(store, config.redis_url, poll=config.poll)
    else:
        runner = Runner(
            store, storage, registry, max_batch=config.max_batch, lease=config.lease, threads=config.threads
        )
        dispatch = LocalDispatch(store, runner, poll=config.poll, batch_wait=config.batch_wait)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        dispatch.start()
        yield
        dispatch.stop()

    app = FastAPI(title="ssdxl", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = JobService(store, storage, registry, dispatch, config)
    errors.install(app)
    for router in (segmind.router, a1111.router, openai.router, jobs_api.router, adapters.router, web.router):
        app.include_router(router)
    app.add_middleware(AuthMiddleware, keys=KeyStore(store.db), storage=storage)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    return app
