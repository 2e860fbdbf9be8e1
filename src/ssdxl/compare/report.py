"""What a comparison writes: the labelled grid, every cell as a PNG with its parameters (so
``ssdxl generate --from-png`` re-creates it), and the per-row numbers as Markdown and JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ssdxl.compare.grid import labelled_grid
from ssdxl.compare.run import METHOD, Comparison, GroupResult
from ssdxl.output.files import save_image

MIB = 2**20


def write_comparison(comparison: Comparison, output: Path, cells_dir: Path | None = None, zoom: int = 1) -> dict:
    """Write ``output`` (the grid), the cells (default: a folder named after it), ``output`` .md and .json;
    returns the JSON record."""
    plan = comparison.plan
    cells_dir = output.with_suffix("") if cells_dir is None else cells_dir
    paths = [
        save_image(image, cells_dir / _cell_name(plan.row_labels[cell.row], plan.column_labels[cell.column], cell))
        for cell, image in zip(plan.cells, comparison.images, strict=True)
    ]
    rows: list[list] = [[] for _ in plan.row_labels]
    for cell, image in zip(plan.cells, comparison.images, strict=True):
        rows[cell.row].append(image.image)
    output.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(rows, plan.row_labels, plan.column_labels, zoom).save(output, optimize=True)
    record = to_record(comparison, output, paths)
    output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(record, output.name) + "\n")
    return record


def _cell_name(row: str, column: str, cell) -> str:
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", f"{row}_{column}").strip("_")[:80]
    return f"{cell.row:02d}-{cell.column:02d}-{slug}.png"


def to_record(comparison: Comparison, grid: Path, paths: list[Path]) -> dict[str, Any]:
    """Everything the comparison measured, JSON-ready."""
    plan = comparison.plan
    template = plan.cells[0].request
    return {
        "prompts": plan.prompts,
        "negative_prompt": template.negative_prompt,
        "seeds": plan.seeds,
        "vary": {v.field: list(v.values) for v in plan.varies},
        "models": [{"label": m.label, "source": m.source, "refiner": m.refiner} for m in plan.models],
        "device": comparison.device,
        "dtype": comparison.dtype,
        "axes": {"rows": plan.row_axis, "columns": plan.column_axis},
        "grid": str(grid),
        "row_labels": plan.row_labels,
        "column_labels": plan.column_labels,
        "method": METHOD,
        "rows": [_row(group) for group in comparison.groups],
        "cells": [
            {
                "row": cell.row,
                "column": cell.column,
                "model": plan.models[cell.model].label,
                "vary": cell.vary,
                "prompt": cell.request.prompt,
                "seed": cell.request.seed,
                "path": str(path),
            }
            for cell, path in zip(plan.cells, paths, strict=True)
        ],
    }


def _row(group: GroupResult) -> dict[str, Any]:
    return {
        "model": group.model,
        "vary": group.vary,
        "images": len(group.cells),
        "seconds_per_image": group.seconds_per_image,
        "seconds_per_step": group.seconds_per_step,
        "peak_rss_bytes": group.peak_rss_bytes,
        "peak_cuda_bytes": group.peak_cuda_bytes,
        "unet_parameters": group.unet_parameters,
        "refiner_unet_parameters": group.refiner_unet_parameters,
        "adherence_all_right": group.adherence,
        "metrics": group.metrics,
    }


def markdown(record: dict[str, Any], grid_name: str) -> str:
    """The record as a page: settings, the grid, one table row per model and varied value, the method."""
    rows = record["rows"]
    varied = list(record["vary"])
    columns: list[tuple[str, Any]] = [("model", lambda r: r["model"])]
    columns += [(name, lambda r, name=name: r["vary"][name]) for name in varied]
    columns += [
        ("images", lambda r: r["images"]),
        ("s / image (warm-up excluded)", lambda r: f"{r['seconds_per_image']:.3f}"),
        ("s / step, denoising", lambda r: f"{r['seconds_per_step']:.4f}"),
        ("peak RSS (MiB)", lambda r: f"{r['peak_rss_bytes'] / MIB:,.0f}"),
    ]
    if any(r["peak_cuda_bytes"] is not None for r in rows):
        columns.append(("peak CUDA (MiB)", lambda r: f"{(r['peak_cuda_bytes'] or 0) / MIB:,.0f}"))
    columns.append(("UNet parameters", lambda r: f"{r['unet_parameters']:,}"))
    if any(r["refiner_unet_parameters"] for r in rows):
        columns.append(("refiner UNet parameters", lambda r: f"{r['refiner_unet_parameters'] or 0:,}"))
    if any(r["adherence_all_right"] is not None for r in rows):
        columns.append(("adherence, all right", lambda r: f"{r['adherence_all_right']:.0%}"))
    for name in dict.fromkeys(k for r in rows for k in r["metrics"]):
        columns.append((name, lambda r, name=name: f"{r['metrics'][name]:.4g}" if name in r["metrics"] else ""))
    prompts, negative = record["prompts"], record["negative_prompt"]
    lines = [
        "# ssdxl compare",
        "",
        f"Prompt{'s' if len(prompts) > 1 else ''}: " + "; ".join(f"`{p}`" for p in prompts) + ".",
        *([f"Negative prompt: `{negative}`."] if negative else []),
        f"Seeds: {', '.join(map(str, record['seeds']))}. Device {record['device']}, {record['dtype']}.",
        f"Grid rows: {' x '.join(record['axes']['rows'])}; columns: {' x '.join(record['axes']['columns'])}.",
        "",
        f"![comparison grid]({grid_name})",
        "",
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows),
        "",
        *(f"- {name}: {text}" for name, text in record["method"].items()),
    ]
    return "\n".join(lines)
