"""The one job path: every dialect turns its request into a ``GenerationRequest`` and comes here.

``submit`` checks the rate limit, the model, the request contract every entry point shares (``check_request``, with
the server's ``limits``) and the LoRAs, embeddings and prompt weights the request names (``adapters.accept``: a bad
one is this request's 422, never a failed batch), fixes a random
seed (so a job re-run after a crash makes the same image), stores the request and wakes a runner;
the synchronous dialects ``run``: submit, ``wait`` for the job and read its ``images``. A waiter is woken by the
``notifier`` when this process changes its job and looks at the store every ``poll`` seconds for jobs other processes
run; a synchronous client that hangs up cancels its job (nobody is left to answer), unless it sent an
``Idempotency-Key`` and so may come back for the result. Store and image work runs off the event loop. Jobs are
visible only to the key that made them. Image tools that answer at once (upscaling, control-map previews) count
against the same rate limit and run in ``tool``: off the event loop, one at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.requests import Request

from ssdxl.errors import UserError
from ssdxl.sampling.limits import check_request
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server.adapters import accept
from ssdxl.server.auth import ApiKey, RateLimiter, request_key
from ssdxl.server.config import ServerConfig
from ssdxl.server.notify import JobNotifier
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.schemas import ImageLink, JobView
from ssdxl.server.storage import Storage
from ssdxl.server.store import CANCELLED, IDEMPOTENCY, SUCCEEDED, Job, JobStore

CLIENT_GONE = 499  # the status a hung-up client's request ends with in the logs (nginx's "client closed request")
TOOLS_AT_ONCE = 1  # image tools (upscaling, preprocessing) running at once: each can take all CPU cores or GPU memory
T = TypeVar("T")


@dataclass
class StoredImage:
    file: str
    data: bytes  # the PNG, with its infotext and parameters
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
        notifier: JobNotifier,
    ):
        self.store = store
        self.storage = storage
        self.registry = registry
        self.dispatch = dispatch  # LocalDispatch or RedisDispatch: has notify()
        self.config = config
        self.notifier = notifier  # the runner in this process tells it which jobs changed
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

    def cancel(self, job_id: str) -> Job:
        """Cancel a job (a running one stops at its next step) and wake its waiters."""
        job = self.store.cancel(job_id)
        self.notifier.changed([job_id])
        return job

    async def wait(self, job: Job, client: Request) -> Job:
        """The job once finished; 504 (naming the job, which goes on) after ``sync_timeout`` seconds. The job is
        cancelled when ``client`` hangs up first without an ``Idempotency-Key``; the hang-up is seen when the waiter
        wakes: at the job's next step, or within ``poll`` seconds."""
        deadline = time.monotonic() + self.config.sync_timeout
        hang_up = IDEMPOTENCY.get() is None
        with self.notifier.watch(job.id) as watch:  # before reading: a change after the read still wakes it
            job = await anyio.to_thread.run_sync(self.store.get, job.id)
            while not job.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HTTPException(504, f"job {job.id} is still {job.status}; follow it at /v2/jobs/{job.id}")
                await watch.wait(min(self.config.poll, left))
                if hang_up and await client.is_disconnected():
                    await anyio.to_thread.run_sync(self.cancel, job.id)
                    raise HTTPException(CLIENT_GONE, f"the client hung up; job {job.id} was cancelled")
                job = await anyio.to_thread.run_sync(self.store.get, job.id)
        return job

    async def run(self, request: GenerationRequest, *, model: str | None, client: Request) -> list[StoredImage]:
        """Submit for ``client``'s key, wait (a hang-up cancels the job), and return the images; a failed job raises
        what its error calls for."""
        submit = functools.partial(self.submit, request, model=model, caller=request_key(client))
        job = await self.wait(await anyio.to_thread.run_sync(submit), client)
        return await anyio.to_thread.run_sync(self.images, job)

    def images(self, job: Job) -> list[StoredImage]:
        """A finished job's images, read from storage (blocking: call it off the event loop)."""
        if job.status == SUCCEEDED:
            return [
                StoredImage(i["file"], self._read(i["file"]), i["seed"], i["infotext"]) for i in job.result["images"]
            ]
        if job.status == CANCELLED:
            raise HTTPException(409, f"job {job.id} was cancelled")
        if job.error_kind == "user":
            raise UserError(job.error)
        raise HTTPException(500, f"job {job.id} failed: {job.error}")

    def _read(self, name: str) -> bytes:
        data = self.storage.read(name)
        if data is None:
            raise HTTPException(500, f"result image {name} is missing from storage")
        return data

    def base_url(self, request: Request) -> str:
        """Where clients reach this server: ``--public-url``, else the request's own base, without a trailing /."""
        return (self.config.public_url or str(request.base_url)).rstrip("/")

    def link(self, request: Request, file: str) -> str:
        """An absolute, signed URL for a result image, usable without a key until it expires."""
        return f"{self.base_url(request)}/v2/files/{file}?{self.storage.sign(file, self.config.link_ttl)}"

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
