"""``ssdxl distill``: make an SSD-1B- or Vega-style student of any SDXL-architecture model.

    ssdxl distill --teacher MODEL --layout ssd-1b --data DATASET --out STUDENT_DIR
    ssdxl distill plan --teacher MODEL --layout vega

A typer group: its callback trains (when no subcommand is given), ``plan`` only prints. Registered
by ``ssdxl.cli.main``; it imports nothing from the CLI app at import time (no import cycle), so
``accelerate launch -m ssdxl.cli.distill ...`` works too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ssdxl.cli.finetune import lcm
from ssdxl.errors import UserError

DEFAULT_STEPS = 1000
TEACHER_HELP = "Teacher: model folder, .safetensors, built-in name or repo id."
F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Distil an SDXL-architecture model into a smaller, faster student (block removal + knowledge "
    "distillation). Without a subcommand: train; 'plan' shows the student without training.",
)


def _user_errors(func: F) -> F:
    """The CLI's one-line error handling (``ssdxl.cli.main.user_errors``), looked up when called."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ssdxl.cli.main import user_errors

        return user_errors(func)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@app.callback()
@_user_errors
def distill(
    ctx: typer.Context,
    teacher: Annotated[str | None, typer.Option(help=TEACHER_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Student folder (diffusers); run state in OUT/distill/.")] = None,
    layout: Annotated[list[str] | None, typer.Option(help="ssd-1b, vega or a layout file (JSON/YAML); repeat for "
                                                     "progressive stages, each student teaching the next.")] = None,
    data: Annotated[str | None, typer.Option(help="'shapes' (procedural world) or an image+caption folder.")] = None,
    steps: Annotated[int | None, typer.Option(help=f"Optimiser steps per stage (default {DEFAULT_STEPS}).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch per process and micro-step (default 8).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimiser step (default 1).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 1e-5, SSD-1B's).")] = None,
    kd: Annotated[str | None, typer.Option(help="Feature KD: layer (default), block (BK-SDM), none.")] = None,
    lambda_out: Annotated[float | None, typer.Option(help="Weight of output KD (default 0.5).")] = None,
    lambda_feat: Annotated[float | None, typer.Option(help="Weight of feature KD (default 0.5).")] = None,
    select: Annotated[str | None, typer.Option(help="Layers kept of a shortened stack: spread (default), first, "
                                               "importance (measured).")] = None,
    ema_decay: Annotated[float | None, typer.Option(help="Student weight EMA (default 0.999; 0 = off).")] = None,
    size: Annotated[list[str] | None, typer.Option(help="Training size WxH; repeat for aspect buckets "
                                                   "(default: the teacher's default size).")] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="auto (default), no, bf16, fp16.")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing", help="Trade compute "
                                                                "for activation memory (full-size GPUs).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps per checkpoint (default 500).")] = None,
    log_every: Annotated[int | None, typer.Option(help="Steps per log line with every loss term (default 50).")] = None,
    speed_repeats: Annotated[int | None, typer.Option(help="UNet calls timed per model for the report "
                                                      "(default 5; 0 skips).")] = None,
    name: Annotated[str | None, typer.Option(help="Student model name (default TEACHER-LAYOUT).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of data order and noise (default 0).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's choice).")] = None,
    config: Annotated[Path | None, typer.Option(help="JSON/YAML file with these settings and 'stages'; "
                                                "options given here override it.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT with its saved settings.")] = False,
) -> None:  # fmt: skip
    """Distil TEACHER into a student at OUT (a diffusers folder) and write OUT/distill-report.md."""
    if ctx.invoked_subcommand is not None:
        return
    from ssdxl.distill.config import DistillConfig
    from ssdxl.distill.run import distill as run_distill
    from ssdxl.sampling.limits import parse_size

    given = {
        "teacher": teacher, "data": data, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr, "kd": kd,
        "lambda_out": lambda_out, "lambda_feat": lambda_feat, "select": select, "ema_decay": ema_decay,
        "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing,
        "checkpoint_every": checkpoint_every, "log_every": log_every, "speed_repeats": speed_repeats,
        "name": name, "seed": seed, "threads": threads,
        "sizes": [parse_size(s, "--size") for s in size] if size else None,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if resume:
        if out is None:
            raise UserError("--resume needs --out, the folder of the run to continue")
        fixed = sorted(k for k in given if k != "threads")
        if fixed or layout or steps or config:
            raise UserError("--resume keeps the run's settings; give only --out (and --threads)")
        cfg = DistillConfig.load(out)
        cfg.threads = given.get("threads", cfg.threads)
    else:
        settings = DistillConfig.from_file(config).to_dict() if config else {}
        stages = settings.get("stages", [])
        if layout:
            stages = [{"layout": spec, "steps": steps or DEFAULT_STEPS} for spec in layout]
        elif steps:
            stages = [{**stage, "steps": steps} for stage in stages]
        settings.update(given, stages=stages)
        if out is not None:
            settings["out"] = str(out)
        missing = [f"--{k}" for k in ("teacher", "out") if not settings.get(k)]
        if missing or not stages:
            raise UserError(f"missing {', '.join(missing + ([] if stages else ['--layout']))}")
        cfg = DistillConfig.from_dict(settings)
    folder = run_distill(cfg, resume=resume)
    typer.echo(f"student: {folder}  (report: {folder / 'distill-report.md'})")


@app.command()
@_user_errors
def plan(
    teacher: Annotated[str, typer.Option(help=TEACHER_HELP)],
    layout: Annotated[str, typer.Option(help="ssd-1b, vega or a layout file (JSON/YAML).")] = "ssd-1b",
    select: Annotated[str, typer.Option(help="Layers kept of shortened stacks: spread, first, importance.")] = "spread",
    kd: Annotated[str, typer.Option(help="Feature KD level whose pairs to list: layer, block, none.")] = "layer",
    data: Annotated[str, typer.Option(help="Data for --select importance: 'shapes' or a folder.")] = "shapes",
    save_layout: Annotated[Path | None, typer.Option(help="Write the student's layout as JSON, to edit and "
                                                     "pass back as --layout.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:  # fmt: skip
    """Show the student a layout gives for TEACHER: parameters, kept layers, feature pairs. No training."""
    from ssdxl.distill.run import preview_plan

    text, data_out = preview_plan(teacher, layout, select=select, data=data, kd=kd)
    if save_layout is not None:
        save_layout.write_text(json.dumps(data_out["student"], indent=2) + "\n")
    typer.echo(json.dumps(data_out, indent=2) if as_json else text)


app.command("lcm")(lcm)


if __name__ == "__main__":  # ``python -m ssdxl.cli.distill`` / ``accelerate launch -m ssdxl.cli.distill``
    app()
