"""Progress and logging: a tqdm bar (loss, steps/s) and ``log.jsonl`` lines that outlive the run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class Progress:
    """Shows one stage's progress; every ``log_every`` steps also appends a JSON line to ``log_path``."""

    def __init__(self, stage: str, start: int, total: int, log_path: Path, log_every: int) -> None:
        self.stage = stage
        self.log_path = log_path
        self.log_every = log_every
        self.bar = tqdm(total=total, initial=start, desc=stage, unit="step", mininterval=2.0, smoothing=0.05)
        self.loss: float | None = None  # running mean, so the bar shows a trend rather than noise
        self.started = time.perf_counter()
        self.window_start, self.window_steps = self.started, 0

    def step(self, step: int, loss: float, **metrics: float) -> None:
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        self.window_steps += 1
        self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)
        self.bar.update(1)
        if step % self.log_every == 0:
            now = time.perf_counter()
            s_per_step = (now - self.window_start) / self.window_steps
            self.window_start, self.window_steps = now, 0
            self.note(step=step, loss=round(self.loss, 5), s_per_step=round(s_per_step, 4), **metrics)

    def note(self, **values: Any) -> None:
        """Record an event (a metric, a checkpoint) in the log file and above the bar."""
        record = {"stage": self.stage, "time": round(time.perf_counter() - self.started, 1), **values}
        line = json.dumps(record)
        self.bar.write(line)
        with self.log_path.open("a") as f:
            f.write(line + "\n")

    def close(self) -> None:
        self.bar.close()
