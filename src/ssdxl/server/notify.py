"""Wake-ups for requests waiting on a job, so they need not poll the store.

A synchronous request (Segmind, A1111, OpenAI) or an event stream *watches* its job; whatever changes the job in
this process (the runner's progress and results, a cancel) calls ``JobNotifier.changed`` from any thread, and the
watchers' coroutines wake on their own event loop at once. Jobs run by ``ssdxl worker`` processes are reported the
same way through Redis (``dispatch.RedisNotifier`` publishes, ``RedisDispatch`` listens and calls ``changed``). A
watcher also wakes after its ``fallback`` seconds and looks at the store itself, so a lost event (Redis away, a job
another server's runner took) only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import anyio


class Watch:
    """One waiter's wake-up for one job; ``wait`` returns when the job changed or after the fallback interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Called from any thread (the runner's): the event is set on the waiter's own loop."""
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is stopping and nobody waits any more
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """True when woken, False after ``timeout`` seconds; a wake-up that comes while the caller reads the store
        counts for the next wait, so none is lost."""
        woken = False
        with anyio.move_on_after(timeout):
            await self._event.wait()
            woken = True
        self._event.clear()
        return woken


class JobNotifier:
    """Who waits on which job in this process; the runner and the service tell it which jobs changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the runner thread calls ``changed`` while the event loop adds watches
        self._watches: dict[str, list[Watch]] = {}

    def changed(self, job_ids: Iterable[str]) -> None:
        """Wake every watcher of these jobs (any thread; cheap when nobody watches)."""
        with self._lock:
            woken = [watch for job_id in job_ids for watch in self._watches.get(job_id, ())]
        for watch in woken:
            watch.wake()

    @contextmanager
    def watch(self, job_id: str) -> Iterator[Watch]:
        """Watch a job while the block runs (inside a coroutine). Start watching before reading the job, so a change
        made between the read and the wait still wakes it."""
        watch = Watch(asyncio.get_running_loop())
        with self._lock:
            self._watches.setdefault(job_id, []).append(watch)
        try:
            yield watch
        finally:
            with self._lock:
                watches = self._watches[job_id]
                watches.remove(watch)
                if not watches:
                    del self._watches[job_id]
