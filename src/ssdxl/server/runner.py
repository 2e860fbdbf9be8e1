"""Runs jobs: claims a batch of compatible queued jobs, generates it as one UNet batch, records results.

The same runner works inside the server (``dispatch.LocalDispatch``) and in ``ssdxl worker``
processes; the store is its only contact with the rest of the system, so progress, previews and
cancellation behave the same in both. While it works, a heartbeat thread renews its claims. Progress (step of total)
is recorded every step, but a latent preview is encoded only every ``preview_every`` steps and on a pass's last step
(PNG encoding and a blob per job per step would cost more than a small model's step). Inside the server it also tells
the service's ``notifier`` which jobs changed, so waiters wake at once.

Preparing a job (``_prepare``) adds the LoRAs bound to its model name (``--model-lora``) and
resolves it against the engine; whatever fails there (a LoRA or ControlNet made for another architecture, an
embedding of the wrong width: ``Engine.resolve`` checks them; a hires pass over the server's sides from the model's
default size) fails that job alone, before it joins a batch.
Only jobs with equal ``Engine.batch_key`` (prompt lengths in chunks included) share a batch, and a batch of
several jobs that fails anyway is run again one job at a time: a job can only ever fail itself.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch

from ssdxl.adapters.library import prompt_loras
from ssdxl.errors import UserError
from ssdxl.models.latent_preview import preview_png
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.server import PREVIEW_EVERY
from ssdxl.server.controls import check_hires_size
from ssdxl.server.db import StoreUnavailable
from ssdxl.server.notify import JobNotifier
from ssdxl.server.registry import ModelRegistry
from ssdxl.server.storage import Storage
from ssdxl.server.store import CANCELLED, FAILED, SUCCEEDED, Job, JobStore, worker_id
from ssdxl.speed import threads as speed_threads

log = logging.getLogger("ssdxl.server")
PROGRESS_PAUSE = 10.0  # seconds progress goes unrecorded after the store failed to record it
FINISH_TRIES = 4  # writes of one outcome while the store is away (each waits up to the store's outage time)


class Cancelled(Exception):
    """Every job of the running batch was cancelled: raised from the step callback to stop the loop."""


@dataclass
class _Item:
    job: Job  # as claimed: ``attempts`` counts this run
    request: GenerationRequest  # resolved against the model's defaults


class Runner:
    def __init__(
        self,
        store: JobStore,
        storage: Storage,
        registry: ModelRegistry,
        *,
        max_batch: int = 8,
        lease: float = 60.0,
        threads: int | None = None,
        preview_every: int = PREVIEW_EVERY,
        notifier: JobNotifier | None = None,
    ):
        if preview_every < 0:
            raise UserError(f"--preview-every must be 0 (no previews) or more, got {preview_every}")
        self.store = store
        self.storage = storage
        self.registry = registry
        self.max_batch = max_batch
        self.lease = lease
        self.preview_every = preview_every
        self.notifier = notifier or JobNotifier()  # a worker's: nobody in its process waits on jobs
        self.worker = worker_id(secrets.token_hex(4))
        self._orphans: set[str] = set()  # claimed by this runner, not finished, to be given back (_give_back)
        self._quiet_until = 0.0  # progress is not recorded until then: the store failed it just now
        if threads:
            speed_threads.pin(threads)  # the operator's count: no per-model choice

    def drain(self) -> int:
        """Run batches until no queued job is left for this runner's models; returns how many ran."""
        batches = 0
        while self.run_next():
            batches += 1
        return batches

    def run_next(self) -> bool:
        """Claim one batch and run it; False when nothing was queued."""
        self._give_back()
        candidates = self.store.queued(self.registry.names(), limit=4 * self.max_batch)
        if not candidates:
            return False
        first = candidates[0]
        with ExitStack() as stack:
            try:  # loading the engine may unload another model, never one a batch runs on
                engine = stack.enter_context(self.registry.using(first.model))
                items = self._batch(engine, candidates)
            except Exception as exc:  # the first job cannot even be prepared: it fails alone
                if isinstance(exc, StoreUnavailable):
                    raise  # not the job's fault: it stays queued
                self._fail_alone(first, exc)
                return True
            job_ids = [item.job.id for item in items]
            try:
                claimed = set(self.store.claim(job_ids, self.worker, self.lease))
                self.notifier.changed(claimed)
                items = [_Item(self.store.get(item.job.id), item.request) for item in items if item.job.id in claimed]
                if items:
                    self._run(engine, items)
            except StoreUnavailable:  # whatever this batch holds and did not finish goes back to the queue
                self._orphans.update(job_ids)
                self._give_back(quietly=True)
                raise
        return True

    def _give_back(self, *, quietly: bool = False) -> None:
        """Queue again the jobs a batch cut short by a store outage left claimed by this runner (its heartbeat no
        longer renews them, but its process lives, so nobody else would requeue them before their lease ran out)."""
        if not self._orphans:
            return
        try:
            self.store.release(sorted(self._orphans), self.worker)
        except StoreUnavailable:
            if not quietly:
                raise
            return
        self._orphans.clear()

    # ------------------------------------------------------------------ forming a batch

    def _batch(self, engine: Engine, candidates: list[Job]) -> list[_Item]:
        """The oldest job and the queued jobs that can share its UNet batch, up to ``max_batch`` images."""
        items: list[_Item] = []
        rows = 0
        first_key = None
        for job in candidates:
            if job.model != candidates[0].model:
                continue
            try:
                request = self._prepare(engine, job)
                key = engine.batch_key(request)  # reads its embeddings' files (chunk counts): may fail too
            except Exception:
                if not items:
                    raise
                continue  # it fails on its own when it is the oldest
            fits = rows + request.samples <= self.max_batch
            if not items or (fits and key == first_key):
                first_key = key if not items else first_key
                items.append(_Item(job, request))
                rows += request.samples
        return items

    def _prepare(self, engine: Engine, job: Job) -> GenerationRequest:
        """The stored request resolved for ``engine``: its model's own LoRAs first, then the ones it names."""
        request = self.storage.load_request(job.request)
        if prompt_loras(request.prompt)[1]:  # the server takes tags out when it accepts a job: never resolve one here
            raise UserError("the stored prompt still holds a <lora:...> tag; submit the job again")
        named = [(str(name), float(weight)) for name, weight in request.loras]
        _known_to(engine, [name for name, _ in named], "lora")
        _known_to(engine, [str(name) for name in request.embeddings], "embedding")
        request.loras = [*self.registry.bound_loras(job.model), *named]
        resolved = engine.resolve(request)
        if resolved.hires is not None:  # a size the request left out is the model's default, known only now
            check_hires_size(resolved, "hires", self.registry.limits.max_side)
        return resolved

    def _fail_alone(self, job: Job, exc: Exception) -> None:
        if not self.store.claim([job.id], self.worker, self.lease):
            return
        if isinstance(exc, UserError):
            self._finish(job.id, FAILED, error=str(exc), error_kind="user")
        else:
            log.exception("job %s could not be prepared", job.id)
            self._finish(job.id, FAILED, error=_describe(exc), error_kind="server")

    # ------------------------------------------------------------------ running it

    def _run(self, engine: Engine, items: list[_Item]) -> None:
        first_rows = itertools.accumulate((item.request.samples for item in items[:-1]), initial=0)
        live = {item.job.id: row for item, row in zip(items, first_rows, strict=True)}  # where its images start
        try:
            with self._heartbeat(live):
                results = engine.generate_batch([item.request for item in items], callback=self._on_step(live, engine))
        except Cancelled:
            return
        except StoreUnavailable:
            raise  # the jobs keep their claims; if the store stays away, their leases run out and they run again
        except Exception as exc:
            if len(items) > 1:  # whichever job caused it, no job fails another: each still running runs alone
                log.warning("batch of %d jobs failed (%s); running them one at a time", len(items), _describe(exc))
                for item in items:
                    if item.job.id in live:
                        self._run(engine, [item])
                return
            if isinstance(exc, UserError):
                error, kind = str(exc), "user"
            else:
                log.exception("job %s failed", items[0].job.id)
                error, kind = _describe(exc), "server"
            for job_id in live:
                self._finish(job_id, FAILED, error=error, error_kind=kind)
            return
        batch_size = sum(item.request.samples for item in items)
        for item, result in zip(items, results, strict=True):
            if item.job.id not in live:
                continue
            saved = self.storage.save_results(item.job.id, item.job.attempts, result.images)
            outcome = {
                "images": saved,
                "timings": result.timings,
                "batch_size": batch_size,
                "warnings": result.warnings,
            }
            if not self._finish(item.job.id, SUCCEEDED, result=outcome):
                self.storage.remove([image["file"] for image in saved])  # the claim was lost: not ours to finish

    def _finish(self, job_id: str, status: str, **outcome) -> bool:
        """Record a job's outcome (False: the claim was lost) and wake its waiters in this process.

        A store that went away mid-write leaves the outcome unknown: it is read back before writing again."""
        for attempt in range(FINISH_TRIES):
            try:
                if attempt:
                    job = self.store.get(job_id)
                    if job is not None and job.status == status and job.worker == self.worker:
                        finished = True  # the lost write had been committed
                        break
                finished = self.store.finish(job_id, self.worker, status, **outcome)
                break
            except StoreUnavailable as exc:
                if attempt == FINISH_TRIES - 1:
                    raise
                log.warning("recording job %s: %s; trying again", job_id, exc)
        self.notifier.changed([job_id])
        return finished

    def _on_step(self, live: dict[str, int], engine: Engine):
        """The engine's step callback: stop cancelled jobs, then record progress per job, and a preview when one is
        due (every ``preview_every`` steps and the last; a job keeps its latest preview in between)."""
        fmt, tiny = engine.base.components.latent_format, engine.tiny_vae  # tiny VAE previews where the model has one

        def on_step(step: int, total: int, latents: torch.Tensor) -> None:
            if time.monotonic() < self._quiet_until:
                return  # progress is best effort: while the store fails it, sampling does not wait on it
            try:
                cancelled = self.store.cancel_requested(list(live))
            except Exception as exc:
                self._progress_failed(step, total, exc)
                return
            for job_id in cancelled:
                self._finish(job_id, CANCELLED)
                del live[job_id]
            if not live:
                raise Cancelled
            due = self.preview_every > 0 and (step % self.preview_every == 0 or step == total)
            updates = [
                (job_id, step, total, preview_png(latents[row], fmt, tiny) if due else None)
                for job_id, row in live.items()
            ]
            try:
                self.store.progress(self.worker, updates)
            except Exception as exc:
                self._progress_failed(step, total, exc)
            self.notifier.changed(live)

        return on_step

    def _progress_failed(self, step: int, total: int, exc: Exception) -> None:
        log.warning("step %d of %d not recorded (%s); progress resumes in %.0f s", step, total, exc, PROGRESS_PAUSE)
        self._quiet_until = time.monotonic() + PROGRESS_PAUSE

    @contextmanager
    def _heartbeat(self, live: dict[str, int]) -> Iterator[None]:
        """Renew the claims of the running batch (``live``: its jobs not yet cancelled) every quarter lease while the
        block runs."""
        stop = threading.Event()

        def beat() -> None:
            try:
                while not stop.wait(self.lease / 4):
                    try:
                        self.store.heartbeat(self.worker, self.lease, list(live))
                    except Exception as exc:  # a missed beat is retried at the next; the lease has room for three
                        log.warning("heartbeat not recorded: %s", exc)
            finally:
                self.store.db.close()  # this thread's connection: a thread per batch must not leave one each

        thread = threading.Thread(target=beat, name="ssdxl-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _known_to(engine: Engine, names: list[str], kind: str) -> None:
    """Stored requests name adapters from the folders (the server checked them); the engine's index of the same
    folders may predate a file, so it is re-read once. A name never becomes a path here either."""
    listed = engine.adapters.lora_names if kind == "lora" else engine.adapters.embedding_names
    missing = [name for name in names if name not in listed()]
    if missing:
        engine.adapters.refresh()
        missing = [name for name in missing if name not in listed()]
    if missing:
        label = "LoRA" if kind == "lora" else kind
        raise UserError(f"{label} {missing[0]!r} is not in this runner's --{kind}-dir folders (removed since?)")


def _describe(exc: Exception) -> str:
    return f"internal error ({type(exc).__name__}: {exc})"
