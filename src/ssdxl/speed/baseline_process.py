"""What the baseline scripts (``optimum_intel_run.py``, ``sdcpp_run.py``) share: a one-line error, the timed
runs and the process's peak memory. Imports nothing from ssdxl, since those scripts run in the baselines' own
environments, where they import this file as their sibling."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def reset_peak_rss() -> bool:
    """Restarts the kernel's peak-RSS count (VmHWM) so the timed runs' peak excludes loading; False where it can't."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def vm_hwm_bytes() -> int | None:
    """This process's own peak RSS (ru_maxrss would include the parent's, which a child inherits)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_memory() -> None:
    """Hand freed memory back to the system: glibc keeps the pages of freed tensors in its heap, where another
    process (a baseline's) cannot have them, and where they count in this one's resident size."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def timed_runs(
    run: Callable[[int], tuple[dict[str, Any], Any]], steps: int, repeats: int, image: str
) -> dict[str, Any]:
    """A warm-up of min(2, steps) steps, then ``repeats`` timed runs of ``steps``; ``run(steps)`` returns a run's
    record and its picture (the first timed one is saved to ``image``). Returns the result JSON's ``runs``,
    ``peak_rss_bytes`` (setup and warm-up included) and ``inference_peak_rss_bytes`` (the timed runs alone)."""
    run(min(2, steps))
    release_memory()  # setup's freed memory back to the OS before the timed runs' peak is counted
    peak_rss = vm_hwm_bytes()
    have_hwm = reset_peak_rss()
    runs = []
    for r in range(repeats):
        record, picture = run(steps)
        runs.append(record)
        if r == 0:
            picture.save(image)
        print(f"run {r}: " + ", ".join(f"{k} {_seconds(v):.3f} s" for k, v in record.items()), file=sys.stderr)
    return {"runs": runs, "peak_rss_bytes": peak_rss, "inference_peak_rss_bytes": vm_hwm_bytes() if have_hwm else None}


def _seconds(value: float | list[float] | None) -> float:
    return sum(value) if isinstance(value, list) else value or 0.0
