"""``distill``: a teacher, one or more removal stages, a student folder and a report.

<out>/                        the student: a diffusers folder (``ssdxl generate --model <out>``)
<out>/distill-report.md       what it cost and what it kept (also ``distill-report.json``)
<out>/distill/config.json     the settings (``--resume`` reads them back)
<out>/distill/log.jsonl       one JSON line per log interval / event, losses per term
<out>/distill/stage-N.json    stage N's plan (kept units and layers) and initial output gap
<out>/distill/checkpoints/    latest checkpoint of each stage
<out>/distill/stages/N-name/  the student of every stage but the last (the next stage's teacher)

Layouts given by name are applied to the first teacher, so SDXL -> ``ssd-1b`` -> ``vega`` yields
exactly SSD-1B and then exactly Vega; each stage starts from the previous stage's student.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ssdxl.distill.config import RUN_FOLDER, DistillConfig
from ssdxl.distill.features import feature_pairs
from ssdxl.distill.inputs import Frozen
from ssdxl.distill.layout import Layout, resolve_layout
from ssdxl.distill.loop import (
    bucket_sizes,
    distill_stage,
    measurement_inputs,
    plan_student,
    plan_summary,
)
from ssdxl.distill.measure import seconds_per_step, timing_inputs
from ssdxl.distill.student import make_plan
from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.models.components import Components
from ssdxl.models.loading import load_components
from ssdxl.models.presets import get_preset, preset_names, unet_stats
from ssdxl.speed.machine import cpu_model
from ssdxl.training.accelerator import COMPUTE_DTYPES, make_accelerator
from ssdxl.training.export import export_model

REPORT = "distill-report"


def distill(cfg: DistillConfig, resume: bool = False) -> Path:
    """Run every stage into ``cfg.out``; returns the student's folder."""
    cfg.validate()
    out = Path(cfg.out)
    if cfg.run_dir.exists() and not resume:
        raise UserError(f"{str(out)!r} already holds a distillation run; pass --resume or choose another --out")
    if not cfg.run_dir.exists() and out.exists() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} exists and is not empty; choose a new --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # Teacher and every stage's layout, checked before any work or any file is written.
    root = load_components(cfg.teacher)
    root_layout = Layout.of(dict(root.unet.config))
    layouts = [resolve_layout(stage.layout, root_layout) for stage in cfg.stages]
    chain = [root_layout] + [layout for _, layout in layouts]
    for teacher_layout, student_layout in itertools.pairwise(chain):
        make_plan(teacher_layout, student_layout, "first")  # UserError unless each student is part of its teacher
    bucket_sizes(cfg, root)
    name = cfg.name or f"{root.name}-{layouts[-1][0]}"

    acc = make_accelerator(cfg.mixed_precision, cfg.grad_accum)
    torch.manual_seed(cfg.seed + acc.process_index)
    if acc.is_main_process:
        cfg.save()
    teacher, reports, unets = root, [], {f"teacher {root.name}": root.unet}
    for index, (stage, (layout_name, layout)) in enumerate(zip(cfg.stages, layouts, strict=True), start=1):
        result = distill_stage(cfg, acc, index, layout_name, layout, stage.steps, teacher)
        teacher = result.parts
        teacher.name = name if index == len(cfg.stages) else f"{root.name}-{layout_name}"
        reports.append(result.report)
        unets[f"stage {index} {layout_name}"] = teacher.unet
        if acc.is_main_process:
            if index < len(cfg.stages):
                export_model(teacher, cfg.run_dir / "stages" / f"{index}-{layout_name}", cfg.save_dtype)
            else:
                publish(teacher, out, cfg.save_dtype)
        acc.wait_for_everyone()

    if acc.is_main_process:
        speed = measure_speed(unets, teacher, cfg.speed_repeats, acc) if cfg.speed_repeats else {}
        write_report(out, cfg, root, reports, speed)
    return out


def publish(parts: Components, out: Path, dtype: str) -> None:
    """Write the student's diffusers folder at ``out`` itself, beside its ``distill/`` run folder."""
    staged = export_model(parts, out / RUN_FOLDER / "export", dtype)
    for item in staged.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        item.replace(target)
    staged.rmdir()


def measure_speed(unets: dict[str, Any], model: Components, repeats: int, acc: Accelerator) -> dict[str, float]:
    """Median seconds per guided UNet step at the model's default size, every UNet in the compute dtype."""
    dtype = COMPUTE_DTYPES[acc.mixed_precision]
    copies = {name: copy.deepcopy(unet).to(acc.device, dtype).eval() for name, unet in unets.items()}
    width, height = int(model.defaults.get("width", 1024)), int(model.defaults.get("height", 1024))
    config = dict(model.unet.config)
    inputs = timing_inputs(config, width, height, model.vae_scale, acc.device, dtype)
    return seconds_per_step(copies, inputs, repeats)


def write_report(out: Path, cfg: DistillConfig, root: Components, stages: list[dict], speed: dict[str, float]) -> None:
    teacher_params = unet_stats(dict(root.unet.config))[0]
    data = {"teacher": cfg.teacher, "teacher_params": teacher_params, "stages": stages,
            "seconds_per_unet_step": speed, "machine": machine()}  # fmt: skip
    (out / f"{REPORT}.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        f"# Distillation report: {out.name}",
        "",
        f"Teacher `{cfg.teacher}` (UNet {teacher_params:,} parameters), data `{cfg.data}`, "
        f"feature KD `{cfg.kd}` (lambda_out {cfg.lambda_out}, lambda_feat {cfg.lambda_feat}).",
        "",
        "| stage | layout | UNet params | of teacher | transformer layers | steps x batch | train time | "
        "output gap (init -> final) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        lines.append(
            f"| {s['stage']} | {s['layout']} | {s['student_params']:,} | {s['student_params'] / teacher_params:.1%} "
            f"| {s['teacher_transformer_layers']} -> {s['student_transformer_layers']} "
            f"| {s['steps']} x {s['batch_size']} | {s['train_seconds'] / 60:.1f} min "
            f"| {s['output_gap_init']:.4g} -> {s['output_gap_final']:.4g} |"
        )
    if speed:
        base = next(iter(speed.values()))
        lines += ["", "Seconds per guided UNet step (median, batch 2, default size, measured together):", ""]
        lines += ["| model | s/step | vs teacher |", "|---|---|---|"]
        lines += [f"| {name} | {sec:.4f} | {sec / base:.2f}x |" for name, sec in speed.items()]
    for s in stages:
        lines += ["", f"## Stage {s['stage']}: {s['layout']}", "", "```", s["plan"], "```",
                  f"Final running losses: {s['final_losses']}"]  # fmt: skip
    m = machine()
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, device {m['device']}."]
    (out / f"{REPORT}.md").write_text("\n".join(lines) + "\n")


def machine() -> dict[str, Any]:
    """What the timings were measured on."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def preview_plan(
    teacher: str, layout_spec: str, select: str = "spread", data: str = "shapes", kd: str = "layer"
) -> tuple[str, dict[str, Any]]:
    """``distill plan``: the student a layout gives for ``teacher``, as text and as data, without training.

    Only the teacher's UNet config is read when it can be (a folder, or a preset name such as
    ``sdxl-base``: its config, counted on the meta device, so no weights are needed), unless
    importance is measured, which runs the teacher.
    """
    config = _folder_unet_config(teacher)
    if config is None and select != "importance" and teacher in preset_names():
        config = get_preset(teacher).component("unet")
    if select == "importance" or config is None:
        try:
            parts = load_components(teacher)
        except UserError:
            if teacher not in preset_names():
                raise
            raise UserError(f"--select importance runs the teacher, and {teacher!r} is a preset without weights "
                            "here; give its folder or file, or choose spread or first") from None  # fmt: skip
        config = dict(parts.unet.config)
    layout_name, layout = resolve_layout(layout_spec, Layout.of(config))
    if select == "importance":
        cfg = DistillConfig(teacher=teacher, out="", stages=[], data=data)
        inputs = measurement_inputs(cfg, Frozen.of(parts, torch.device("cpu")), bucket_sizes(cfg, parts))
        plan = plan_student(parts.unet, layout, select, inputs)
    else:
        plan = make_plan(Layout.of(config), layout, select)
    pairs = feature_pairs(plan, kd)
    data_out = {"layout": layout_name, **plan.to_dict(), "feature_pairs": pairs}
    return plan_summary(config, layout_name, plan, kd, pairs), data_out


def _folder_unet_config(source: str) -> dict[str, Any] | None:
    folder = builtin.resolve(source) or Path(source).expanduser()
    config = folder / "unet" / "config.json"
    return json.loads(config.read_text()) if config.is_file() else None
