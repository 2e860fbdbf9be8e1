"""The one job path: every dialect turns its request into a ``GenerationRequest`` and comes here.

``submit`` checks the rate limit, the model, the request contract every entry point shares (``check_request``, with
the server's ``limits``) and the LoRAs, embeddings and prompt weights the request names (``adapters.accept``: a bad
one is this request's 422, never a failed batch), fixes a random
seed (so a job re-run after a crash makes the same image), stores the request and wakes a runner;
the synchronous dialects then ``wait`` for the job and read its ``images``. Jobs are visible only
to the key that made them. Image tools that answer at once (upscaling, control-map previews) count
against the same rate limit and run in ``tool``: off the event loop, one at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ssdxl.errors import UserError
from ssdxl.sampling.limits import check_request
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.adapters import accept
from ssdxl.server.auth import ApiKey, RateLimiter
from ssdxl.server.config import ServerConfig
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.schemas import ImageLink, JobView
from ssdxl.server.storage import Storage
from ssdxl.server.store import CANCELLED, SUCCEEDED, Job, JobStore

WAIT_POLL = 0.05  # seconds between looks at a job a synchronous request waits for
TOOLS_AT_ONCE = 1  # image tools (upscaling, preprocessing) running at once: each can take all CPU cores or GPU memory
T = TypeVar("T")


@dataclass
class StoredImage:
    file: str
    path: Path
    seed: int
    infotext: str


class JobService:
    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        registry: ModelRegistry,
        dispatch,
        config: ServerConfig,
    ):
        self.store = store
        self.storage = storage
        self.registry = registry
        self.dispatch = dispatch  # LocalDispatch or RedisDispatch: has notify()
        self.config = config
        self.limiter = RateLimiter()
        self.tools = anyio.CapacityLimiter(TOOLS_AT_ONCE)

    def check_rate(self, caller: ApiKey | None) -> None:
        """Count one piece of work against the caller's rate; 429 with ``Retry-After`` beyond it."""
        wait = self.limiter.retry_after(caller)
        if wait is not None:
            message = f"key {caller.name!r} may start {caller.rate_per_min:g} jobs a minute; retry in {wait:.1f} s"
            raise HTTPException(429, message, headers={"Retry-After": str(math.ceil(wait))})

    async def tool(self, caller: ApiKey | None, work: Callable[[], T]) -> T:
        """Run image work a request waits for (an upscale, a control map) in a thread, after the rate check, one at a
        time, so the event loop keeps answering and the machine is not oversubscribed."""
        self.check_rate(caller)
        return await anyio.to_thread.run_sync(work, limiter=self.tools)

    def submit(self, request: GenerationRequest, *, model: str | None, caller: ApiKey | None) -> Job:
        self.check_rate(caller)
        name = self.registry.check(model, refiner=request.refiner)
        check_request(request, self.config.limits)  # what Engine.resolve checks first: refused now, not as a job
        request = accept(request, self.registry.adapters)
        if request.seed == -1:
            request = dataclasses.replace(request, seed=secrets.randbelow(2**32))
        job_id = uuid.uuid4().hex
        record = self.storage.save_request(job_id, request)
        job = self.store.add(job_id, owner=caller.id if caller else None, model=name, request=record)
        self.dispatch.notify()
        return job

    def get(self, job_id: str, caller: ApiKey | None) -> Job:
        job = self.store.get(job_id)
        if job is None or (caller is not None and job.owner != caller.id):
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    async def wait(self, job: Job) -> Job:
        """The job once finished; 504 (naming the job, which goes on) after ``sync_timeout`` seconds."""
        deadline = time.monotonic() + self.config.sync_timeout
        while not job.done:
            if time.monotonic() > deadline:
                raise HTTPException(504, f"job {job.id} is still {job.status}; follow it at /v2/jobs/{job.id}")
            await asyncio.sleep(WAIT_POLL)
            job = self.store.get(job.id)
        return job

    async def run(self, request: GenerationRequest, *, model: str | None, caller: ApiKey | None) -> list[StoredImage]:
        """Submit, wait, and return the images; a failed job raises what its error calls for."""
        return self.images(await self.wait(self.submit(request, model=model, caller=caller)))

    def images(self, job: Job) -> list[StoredImage]:
        if job.status == SUCCEEDED:
            return [
                StoredImage(i["file"], self.storage.path(i["file"]), i["seed"], i["infotext"])
                for i in job.result["images"]
            ]
        if job.status == CANCELLED:
            raise HTTPException(409, f"job {job.id} was cancelled")
        if job.error_kind == "user":
            raise UserError(job.error)
        raise HTTPException(500, f"job {job.id} failed: {job.error}")

    def link(self, request: Request, file: str) -> str:
        """An absolute, signed URL for a result image, usable without a key until it expires."""
        base = self.config.public_url or str(request.base_url)
        return f"{base.rstrip('/')}/v2/files/{file}?{self.storage.sign(file, self.config.link_ttl)}"

    def view(self, job: Job, request: Request) -> JobView:
        stored = [] if job.status != SUCCEEDED else job.result["images"]
        images = [ImageLink(url=self.link(request, i["file"]), seed=i["seed"], infotext=i["infotext"]) for i in stored]
        return JobView(
            id=job.id,
            status=job.status,
            model=job.model,
            position=self.store.position(job),
            step=job.step,
            total=job.total,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            created=job.created,
            started=job.started,
            finished=job.finished,
            error=job.error,
            batch_size=job.result.get("batch_size") if job.result else None,
            warnings=job.result.get("warnings", []) if job.result else [],
            images=images,
            params=job.request,
        )
