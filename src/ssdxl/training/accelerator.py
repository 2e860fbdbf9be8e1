"""The ``Accelerator`` every trainer runs under: devices, mixed precision, gradient accumulation and
``accelerate launch`` over several GPUs, with one rule for what "auto" precision means."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator

from ssdxl.errors import UserError
from ssdxl.sampling.precision import cpu_has_fast_bf16
from ssdxl.training.data import Batch, BucketBatches

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
COMPUTE_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_accelerator(mixed_precision: str, grad_accum: int) -> Accelerator:
    """An ``Accelerator`` for this run. accelerate keeps its state per process, and one process may
    run several trainings (distillation stages, proof scripts, tests), so a single-process run starts afresh."""
    from accelerate.state import AcceleratorState

    if mixed_precision not in MIXED_PRECISION:
        raise UserError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}")
    if mixed_precision == "auto":
        if torch.cuda.is_available():
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed_precision = "bf16" if cpu_has_fast_bf16() else "no"
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("fp16 mixed precision needs a CUDA GPU; use bf16 or no on the CPU")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum)


def own_batch(batches: BucketBatches, acc: Accelerator) -> Batch:
    """Every process draws the same sequence and keeps its share, so one data position resumes them all."""
    drawn = [next(batches) for _ in range(acc.num_processes)]
    return drawn[acc.process_index]
