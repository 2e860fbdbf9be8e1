"""Clocks for a shared machine: wall time (what a user waits) next to process CPU time (what the
work cost, which other processes on the machine barely change), medians with their spread, and
the resident-memory peak sampled while a run is going."""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Mark:
    wall: float
    cpu: float

    @staticmethod
    def now() -> Mark:
        return Mark(time.perf_counter(), time.process_time())

    def since(self, start: Mark) -> Mark:
        return Mark(self.wall - start.wall, self.cpu - start.cpu)


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (seconds); empty input gives an empty dict."""
    if not values:
        return {}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Samples this process's resident memory in a thread; ``peak`` is the high-water mark in bytes."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
