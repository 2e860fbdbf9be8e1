"""Quality columns of a comparison: shapes-world prompt adherence (needs the loaded model) and image
metrics (FID, IS, CLIP score, LPIPS of ``ssdxl.evaluation.metrics``, on the generated cells)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ssdxl.errors import UserError
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

if TYPE_CHECKING:
    from ssdxl.compare.plan import Cell, Plan
    from ssdxl.compare.run import Comparison
    from ssdxl.evaluation.metrics import MetricSuite


def adherence_share(engine: Engine, template: GenerationRequest, prompts: int) -> float:
    """The share of ``prompts`` held-out shapes-world prompts (half one-object, half two-object) whose every
    attribute the judge finds right, generated with ``template``'s settings (prompt, size and seed are the
    suite's). Meaningful for models of the built-in world only."""
    from ssdxl.evaluation.adherence import adherence_suite, evaluate

    def generate(prompt: str, width: int, height: int, seed: int):
        request = replace(template, prompt=prompt, width=width, height=height, seed=seed)
        return engine.generate(request).images[0].image

    report = evaluate(generate, adherence_suite(n_single=(prompts + 1) // 2, n_double=prompts // 2))
    return report.accuracy["all"]


def load_metrics(
    plan: Plan, weights_dir: Path | None, names: list[str], reference: str | None, *, allow_pickle: bool, device: str
) -> MetricSuite:
    """The metric networks, loaded (and the reference checked) before any image is generated, so that missing
    weights fail at once."""
    from ssdxl.evaluation.metrics import MetricSuite
    from ssdxl.sampling.precision import pick_device

    _check_reference(plan, reference)
    if "fid" in names and reference is None:
        raise UserError("fid compares against a reference model's images: pass --reference-model LABEL")
    smallest = min(len(indices) for _, _, indices in plan.groups())
    if {"fid", "is"} & set(names) and smallest < 2:
        raise UserError(f"fid and is need at least two images a row (this plan makes {smallest}): add seeds or prompts")
    return MetricSuite.load(weights_dir, names, allow_pickle=allow_pickle, device=pick_device(device))


def score_metrics(comparison: Comparison, suite: MetricSuite, reference: str | None = None) -> None:
    """Fill each report row's ``metrics``. With a ``reference`` model label, its cells with the same varied
    values, prompts and seeds are FID's reference set and LPIPS's pairs (its own row scores 0 on both);
    without one there is no FID and LPIPS is the diversity among a row's seeds."""
    plan = comparison.plan
    labels = _check_reference(plan, reference)
    aligned = {_place(cell): i for i, cell in enumerate(plan.cells) if labels[cell.model] == reference}
    for group in comparison.groups:
        cells = [plan.cells[i] for i in group.cells]
        images = [comparison.images[i].image for i in group.cells]
        references = [comparison.images[aligned[_place(cell)]].image for cell in cells] if aligned else None
        group.metrics = suite.score(images, [cell.request.prompt for cell in cells], references)


def _check_reference(plan: Plan, reference: str | None) -> list[str]:
    """The model labels, of which ``reference`` (if given) must be one."""
    labels = [m.label for m in plan.models]
    if reference is not None and reference not in labels:
        raise UserError(f"--reference-model {reference!r} is not a model label; labels: {', '.join(labels)}")
    return labels


def _place(cell: Cell) -> tuple:
    """What a cell shows but for its model: equal in the aligned cell of every other model."""
    return (*cell.vary.items(), cell.request.prompt, cell.request.seed)
