"""What a distillation run is: teacher, stages (layout + steps each), objective and training knobs.

Written to ``<out>/distill/config.json`` when a run starts, so ``--resume`` continues with exactly
those settings. A config file (JSON or YAML, same keys) can hold a whole progressive run:

    teacher: stabilityai/stable-diffusion-xl-base-1.0
    out: ssd-vega
    data: /data/captioned
    stages: [{layout: ssd-1b, steps: 20000}, {layout: vega, steps: 20000}]
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdxl.distill.features import KD_LEVELS
from ssdxl.distill.layout import read_mapping_file
from ssdxl.distill.student import SELECTIONS
from ssdxl.errors import UserError
from ssdxl.training.accelerator import MIXED_PRECISION

RUN_FOLDER = "distill"  # inside --out, beside the student's diffusers folders
CONFIG_FILE = "config.json"


@dataclass
class Stage:
    layout: str  # a built-in layout name (ssd-1b, vega) or a layout file
    steps: int


@dataclass
class DistillConfig:
    """Every knob of a run. Defaults follow the SSD-1B recipe where it has one."""

    teacher: str  # model folder, single file, built-in name or repo id
    out: str  # the student's diffusers folder; run state goes to <out>/distill/
    stages: list[Stage]  # one per removal step; each stage's student teaches the next
    data: str = "shapes"  # "shapes" (the procedural world) or a folder of images + .txt captions
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) buckets; [] = teacher default
    name: str = ""  # the student's model name; "" = <teacher name>-<last layout>
    seed: int = 0

    # Student construction.
    select: str = "spread"  # which layers of a shortened stack are kept: first, spread, importance

    # Objective.
    kd: str = "layer"  # feature matching: layer, block (BK-SDM) or none (task loss only)
    lambda_out: float = 0.5
    lambda_feat: float = 0.5

    # Optimisation.
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999  # 0 turns EMA off (the live weights are exported)
    caption_dropout: float = 0.1
    two_object_fraction: float = 0.4  # shapes world only; the built-in model's training mix
    mixed_precision: str = "auto"  # auto: fp16 on CUDA, bf16 on CPUs with fast bf16, else no
    gradient_checkpointing: bool = False

    checkpoint_every: int = 500
    log_every: int = 50
    measure_batches: int = 2  # held-out batches for importance selection and the output gap in the report
    speed_repeats: int = 5  # UNet calls timed per model for the report (0: skip)
    threads: int = 0  # CPU threads; 0 = torch's default
    save_dtype: str = "float16"

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / RUN_FOLDER

    @property
    def kd_enabled(self) -> bool:
        return self.kd != "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown distillation setting(s): {', '.join(unknown)}")
        values = dict(data)
        try:
            values["stages"] = [s if isinstance(s, Stage) else Stage(**s) for s in values.get("stages", [])]
            values["sizes"] = [(int(w), int(h)) for w, h in values.get("sizes", [])]
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise UserError(f"invalid distillation config: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> DistillConfig:
        data = read_mapping_file(Path(path), "config")
        return cls.from_dict(data)

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, out: str | Path) -> DistillConfig:
        path = Path(out) / RUN_FOLDER / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"{str(out)!r} holds no distillation run ({RUN_FOLDER}/{CONFIG_FILE}); drop --resume")
        return cls.from_dict({**json.loads(path.read_text()), "out": str(out)})

    def validate(self) -> None:
        if not self.stages:
            raise UserError("give at least one layout (--layout ssd-1b, or stages in a config file)")
        for name in ("batch_size", "grad_accum", "checkpoint_every", "log_every", "measure_batches"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1")
        if any(stage.steps < 1 for stage in self.stages):
            raise UserError("every stage needs at least 1 step")
        if self.select not in SELECTIONS:
            raise UserError(f"--select must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        if self.kd not in KD_LEVELS:
            raise UserError(f"--kd must be one of {', '.join(KD_LEVELS)}, got {self.kd!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        if not 0.0 <= self.caption_dropout < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise UserError("caption dropout and EMA decay must be in [0, 1)")
        if min(self.lambda_out, self.lambda_feat, self.lr, self.threads, self.speed_repeats) < 0:
            raise UserError("learning rate, KD weights, threads and speed repeats must not be negative")
