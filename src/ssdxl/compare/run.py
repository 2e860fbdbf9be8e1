"""Run a comparison plan: one model in memory at a time, every cell of it, timed the same way.

Models stream: each is loaded, runs one warm-up image (not timed), all of its cells (and the
adherence prompts when asked), and is released (``del`` + ``gc``, and the CUDA cache emptied)
before the next one loads. Each model is needed only once, so keeping it would buy nothing, and
the peak memory of a comparison is that of its largest model rather than the sum of all.

Per report row (a model, and a value of each ``--vary``): seconds per image are the mean of the
engine's ``total`` timing; seconds per step are the denoising time alone (``denoise`` + ``refine``)
over the steps; the peak RSS is the process's resident-memory high-water mark, sampled every 20 ms
in a thread (``ssdxl.speed.timing.PeakMemory``) while that row's images ran, model weights included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ssdxl.compare.plan import Plan
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.precision import dtype_name, release_memory
from ssdxl.sampling.request import GeneratedImage
from ssdxl.speed.timing import PeakMemory

DENOISE_STAGES = ("denoise", "refine")
#: how the numbers are made, for the reports
METHOD = {
    "timing": "mean over the row's images, measured in this run after one warm-up image per model (not counted); "
    "s/step is denoising alone (the engine's denoise + refine seconds over the steps)",
    "memory": "process resident memory (RSS) high-water mark, sampled every 20 ms in a thread while the row's "
    "images ran, model weights included",
    "streaming": "one model in memory at a time: loaded, all its cells generated, released before the next",
}


@dataclass
class GroupResult:
    """One report row: a model (with one value of each varied field) and what its images cost."""

    model: str
    vary: dict[str, Any]
    cells: list[int]  # indices into Plan.cells
    seconds_per_image: float
    seconds_per_step: float
    peak_rss_bytes: int
    peak_cuda_bytes: int | None  # torch's allocation peak, on CUDA only
    unet_parameters: int
    refiner_unet_parameters: int | None
    adherence: float | None = None  # share of the adherence prompts with every attribute right
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    plan: Plan
    images: list[GeneratedImage]  # one per Plan.cells, same order
    groups: list[GroupResult]
    device: str
    dtype: str


def run_comparison(
    plan: Plan,
    *,
    device: str = "auto",
    dtype: str = "auto",
    allow_pickle: bool = False,
    adherence_prompts: int = 0,
    log: Callable[[str], None] | None = None,
) -> Comparison:
    """Generate every cell of ``plan``, model by model; ``adherence_prompts`` > 0 also judges that many
    held-out shapes-world prompts per report row (``ssdxl.compare.quality.adherence_share``)."""
    from ssdxl.compare.quality import adherence_share

    say = log or (lambda _message: None)
    images: dict[int, GeneratedImage] = {}
    groups: list[GroupResult] = []
    by_model: dict[int, list[tuple[dict[str, Any], list[int]]]] = {}
    for model, vary, cells in plan.groups():
        by_model.setdefault(model, []).append((vary, cells))
    placement = ("", "")
    for index, spec in enumerate(plan.models):
        say(f"{spec.label}: loading {spec.source}" + (f" + refiner {spec.refiner}" if spec.refiner else ""))
        engine = Engine.load(spec.source, refiner=spec.refiner, device=device, dtype=dtype, allow_pickle=allow_pickle)
        placement = (engine.device.type, dtype_name(engine.dtype))
        parameters = _parameters(engine)
        engine.generate(plan.cells[by_model[index][0][1][0]].request)  # warm-up: first-call costs stay out
        for vary, cells in by_model[index]:
            timing = _timed_cells(engine, plan, cells, images)
            template = plan.cells[cells[0]].request
            share = adherence_share(engine, template, adherence_prompts) if adherence_prompts else None
            groups.append(GroupResult(spec.label, vary, cells, *timing, *parameters, adherence=share))
            say(f"{spec.label} {_describe(vary)}{groups[-1].seconds_per_image:.3f} s/image")
        del engine  # the only reference: its weights go before the next model loads
        release_memory()
    return Comparison(plan, [images[i] for i in range(len(plan.cells))], groups, *placement)


def _timed_cells(
    engine: Engine, plan: Plan, cells: list[int], images: dict[int, GeneratedImage]
) -> tuple[float, float, int, int | None]:
    """Generate ``cells`` into ``images``: mean seconds per image and per denoising step, peak RSS and
    (on CUDA) peak allocated bytes."""
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    per_image, per_step = [], []
    with PeakMemory() as memory:
        for i in cells:
            result = engine.generate(plan.cells[i].request)
            images[i] = generated = result.images[0]
            per_image.append(result.timings["total"])
            denoising = sum(result.timings.get(stage, 0.0) for stage in DENOISE_STAGES)
            per_step.append(denoising / generated.params["steps"])
    peak_cuda = torch.cuda.max_memory_allocated(engine.device) if cuda else None
    return sum(per_image) / len(per_image), sum(per_step) / len(per_step), memory.peak, peak_cuda


def _parameters(engine: Engine) -> tuple[int, int | None]:
    """UNet parameters of the base model and of the refiner (None without one)."""
    base, refiner = (
        sum(p.numel() for p in m.components.unet.parameters()) if m else None for m in (engine.base, engine.refiner)
    )
    return base or 0, refiner


def _describe(vary: dict[str, Any]) -> str:
    return "".join(f"{name}={value} " for name, value in vary.items())
