"""One distillation stage: teacher -> student by block removal, then layer-level knowledge distillation.

Read top to bottom: data, frozen parts, plan (which teacher parts the student keeps), student,
objective, optimiser, resume, loop, checkpoint, result. ``accelerate`` places models and batches,
runs mixed precision and gradient accumulation, so ``accelerate launch`` spreads the same code
over several GPUs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from tqdm import tqdm

from ssdxl.distill.config import DistillConfig
from ssdxl.distill.features import Pair, Taps, describe_pairs, feature_pairs
from ssdxl.distill.inputs import Frozen, UNetInputs, fixed_inputs, unet_inputs
from ssdxl.distill.layout import Layout
from ssdxl.distill.losses import Weights, distillation_loss
from ssdxl.distill.measure import output_gap
from ssdxl.distill.selection import layer_importance
from ssdxl.distill.student import Plan, build_student, make_plan
from ssdxl.errors import UserError
from ssdxl.models.components import Components
from ssdxl.models.presets import unet_stats
from ssdxl.training.accelerator import COMPUTE_DTYPES, own_batch
from ssdxl.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ssdxl.training.data import BucketBatches, IndexedSource, fixed_batches, open_source
from ssdxl.training.denoiser import EMA
from ssdxl.training.optim import adamw, cosine_with_warmup
from ssdxl.training.progress import Progress

TERMS = ("task", "out", "feat")


@dataclass
class StageResult:
    parts: Components  # the student with the teacher's VAE, text towers and defaults
    report: dict[str, Any] = field(default_factory=dict)


def distill_stage(
    cfg: DistillConfig, acc: Accelerator, index: int, layout_name: str, layout: Layout, steps: int, teacher: Components
) -> StageResult:
    """Distil ``teacher`` into a student of ``layout`` for ``steps`` optimiser steps (resuming if possible)."""
    run = cfg.run_dir
    stage = f"stage-{index}"
    device, dtype = acc.device, COMPUTE_DTYPES[acc.mixed_precision]
    main = acc.is_main_process

    # Data: the training stream and a fixed held-out set for measurements.
    sizes = bucket_sizes(cfg, teacher)
    source = open_source(cfg.data, cfg.seed, cfg.two_object_fraction, sizes=sizes)
    batches = BucketBatches(source, sizes, cfg.batch_size, seed=cfg.seed + index)
    frozen = Frozen.of(teacher, device)
    held_out = measurement_inputs(cfg, frozen, sizes)

    # Plan and student: the student's weights are copies of the teacher's (float32 master weights).
    teacher_unet = teacher.unet.to(device).eval().requires_grad_(False)
    info_file = run / f"{stage}.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else None
    acc.wait_for_everyone()  # every process has looked before the main one writes it
    if info is not None:
        plan = Plan.from_dict(info["plan"])
    else:
        with acc.autocast():
            plan = plan_student(teacher_unet, layout, cfg.select, held_out)
        info = {"layout": layout_name, "plan": plan.to_dict()}
    student = build_student(teacher_unet, plan).to(device, torch.float32)
    teacher_unet.to(dtype)  # the frozen teacher only runs forward: keep it in the compute dtype
    pairs = feature_pairs(plan, cfg.kd)
    if "output_gap_init" not in info:
        with acc.autocast():
            info["output_gap_init"] = output_gap(student, teacher_unet, held_out)
        if main:
            info_file.write_text(json.dumps(info, indent=2) + "\n")
    if main:
        tqdm.write(f"{stage}\n{plan_summary(dict(teacher_unet.config), layout_name, plan, cfg.kd, pairs)}")

    # Objective: the teacher runs only when some KD term uses it.
    weights = Weights(cfg.lambda_out, cfg.lambda_feat) if cfg.kd_enabled else Weights(0.0, 0.0)
    run_teacher = weights.out > 0 or (weights.feat > 0 and bool(pairs))

    # Optimiser.
    if cfg.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    optimizer = adamw(student.named_parameters(), cfg.lr, cfg.weight_decay)
    schedule = cosine_with_warmup(optimizer, warmup=min(cfg.warmup_steps, steps // 10), total=steps)
    ema = EMA({"unet": student}, cfg.ema_decay) if cfg.ema_decay > 0 else None

    # Resume.
    step, seconds, running = 0, 0.0, dict.fromkeys(("total", *TERMS), 0.0)
    ckpt = checkpoint_path(run, stage)
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        student.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.load_state_dict(state["data"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        step, seconds, running = state["step"], state["seconds"], state["running"]
        if acc.process_index:  # every process restored the main one's RNG; give each its own stream again
            torch.manual_seed(cfg.seed + acc.process_index + step)
    model, optimizer = acc.prepare(student, optimizer)

    # Loop.
    model.train()
    progress = Progress(f"{stage} {layout_name}", step, steps, run / "log.jsonl", cfg.log_every) if main else None
    started = time.perf_counter() - seconds
    with (
        Taps(student, [s for s, _ in pairs]) as student_taps,
        Taps(teacher_unet, [t for _, t in pairs]) as teacher_taps,
    ):
        while step < steps:
            for _ in range(cfg.grad_accum):
                with acc.accumulate(model):
                    with acc.autocast():
                        x = unet_inputs(frozen, own_batch(batches, acc), cfg.caption_dropout)
                        teacher_pred = _teacher_pass(teacher_unet, x) if run_teacher else None
                    student_pred = model(**x.kwargs()).sample
                    losses = distillation_loss(student_pred, x.eps, teacher_pred, student_taps.out, teacher_taps.out,
                                               pairs, weights)  # fmt: skip
                    acc.backward(losses["total"])
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            schedule.step()
            if ema is not None:
                ema.update({"unet": student}, step)
            step += 1
            values = {k: v.item() for k, v in losses.items()}
            running = {k: v if step == 1 else 0.98 * running[k] + 0.02 * v for k, v in values.items()}
            if progress is not None:
                progress.step(step, values["total"], **{k: round(values[k], 5) for k in TERMS},
                              lr=schedule.get_last_lr()[0])  # fmt: skip

            if step % cfg.checkpoint_every == 0 or step == steps:
                seconds = time.perf_counter() - started
                if main:
                    state = {"unet": student.state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict(), "data": batches.state_dict(), "step": step,
                             "ema": ema.state_dict() if ema is not None else None, "seconds": seconds,
                             "running": running}  # fmt: skip
                    save_checkpoint(ckpt, state)
                    progress.note(step=step, checkpoint=str(ckpt))
                acc.wait_for_everyone()
    if progress is not None:
        progress.close()

    # Result: the averaged weights when there are any.
    final = ema.copies["unet"] if ema is not None else student
    final.eval().requires_grad_(False)
    with acc.autocast():
        gap = output_gap(final, teacher_unet, held_out)
    report = {
        "stage": index,
        "layout": layout_name,
        "layout_detail": plan.student.to_dict(),
        "teacher_params": unet_stats(dict(teacher_unet.config))[0],
        "student_params": unet_stats(dict(final.config))[0],
        "teacher_transformer_layers": plan.teacher.transformer_layers,
        "student_transformer_layers": plan.student.transformer_layers,
        "select": plan.select,
        "kd": cfg.kd,
        "feature_pairs": len(pairs),
        "steps": steps,
        "batch_size": cfg.batch_size * cfg.grad_accum * acc.num_processes,
        "train_seconds": round(seconds, 1),
        "final_losses": {k: round(v, 6) for k, v in running.items()},
        "output_gap_init": info["output_gap_init"],
        "output_gap_final": gap,
        "plan": plan.describe(),
    }
    return StageResult(teacher_with_unet(teacher, final), report)


def plan_student(teacher: UNet2DConditionModel, layout: Layout, select: str, inputs: list[UNetInputs]) -> Plan:
    """The plan for ``layout``, measuring layer importance first when ``select`` asks for it."""
    teacher_layout = Layout.of(dict(teacher.config))
    scores = None
    if select == "importance":
        scores = layer_importance(teacher, make_plan(teacher_layout, layout, "first").shortened_stacks(), inputs)
    return make_plan(teacher_layout, layout, select, scores)


def plan_summary(teacher: dict[str, Any], layout_name: str, plan: Plan, kd: str, pairs: list[Pair]) -> str:
    """Teacher and student layouts (from the teacher's UNet config), where every student part comes
    from, and the feature pairs."""
    teacher_params = unet_stats(teacher)[0]
    student_params = unet_stats(plan.student.unet_config(teacher))[0]
    return "\n".join([
        f"teacher UNet: {teacher_params:,} parameters, {plan.teacher.transformer_layers} transformer layers",
        plan.teacher.describe(),
        f"student ({layout_name}): {student_params:,} parameters ({student_params / teacher_params:.1%}), "
        f"{plan.student.transformer_layers} transformer layers",
        plan.student.describe(),
        f"weights (transformer layers kept by '{plan.select}'):",
        plan.describe(),
        f"feature KD ({kd}): {len(pairs)} pairs, student ~ teacher",
        describe_pairs(pairs),
    ])  # fmt: skip


def teacher_with_unet(teacher: Components, unet: UNet2DConditionModel) -> Components:
    """A model that is ``teacher`` with another UNet (VAE, text towers, scheduler, defaults shared)."""
    return dataclasses.replace(teacher, unet=unet)


def bucket_sizes(cfg: DistillConfig, teacher: Components) -> list[tuple[int, int]]:
    """Training sizes: the configured buckets, or the teacher's default size."""
    sizes = cfg.sizes or [(int(teacher.defaults.get("width", 1024)), int(teacher.defaults.get("height", 1024)))]
    multiple = teacher.size_multiple
    for w, h in sizes:
        if w % multiple or h % multiple:
            raise UserError(f"training size {w}x{h} must be a multiple of {multiple} on each side for this model")
    return sizes


@torch.no_grad()
def _teacher_pass(teacher: UNet2DConditionModel, x: UNetInputs) -> torch.Tensor:
    return teacher(**x.kwargs()).sample


def measurement_inputs(cfg: DistillConfig, frozen: Frozen, sizes: list[tuple[int, int]]) -> list[UNetInputs]:
    """Fixed held-out inputs for layer importance and the teacher-student output gap."""
    batches = fixed_batches(_held_out_source(cfg, sizes), sizes, cfg.measure_batches * cfg.batch_size, cfg.batch_size)
    return fixed_inputs(frozen, batches, seed=cfg.seed)


def _held_out_source(cfg: DistillConfig, sizes: list[tuple[int, int]]) -> IndexedSource:
    """Held-out renders for the shapes world (another seed, held-out combinations); the data itself otherwise."""
    if cfg.data == "shapes":
        return open_source("shapes", cfg.seed + 1, cfg.two_object_fraction, split="heldout", sizes=sizes)
    return open_source(cfg.data, cfg.seed)
