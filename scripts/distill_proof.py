"""Prove the distillation trade-off on a teacher (default: the built-in model) and write docs/distillation.md.

Trains, at equal steps, an SSD-1B-like and a Vega-like student with layer-level KD, and the
Vega-like student twice more for the ablation (block-level KD, task loss only). Then measures,
for the teacher and every student: UNet parameters, seconds per guided UNet step (median,
round-robin in one process, ratio to the teacher), and prompt adherence + FID on held-out
shapes-world scenes (``ssdxl.evaluation``).

    OMP_WAIT_POLICY=PASSIVE python scripts/distill_proof.py --teacher shapes
    python scripts/distill_proof.py --teacher DIR --steps 2 --n-single 2 --n-double 2   # smoke test

Cost on the project's 2-core CPU machine (one thread, machine shared with a training job): 0.6-0.9 s
per step at batch 32 with KD, 0.4-0.5 s without, about 0.5 s per evaluation image; with the
defaults (4 x 600 steps, 5 models x 100 images) 30-35 minutes.

Finished runs are reused and interrupted ones resumed, so the same command continues after a stop.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ssdxl.cli.main import quiet_libraries
from ssdxl.distill import DistillConfig, Stage, distill
from ssdxl.distill.measure import seconds_per_step, timing_inputs
from ssdxl.distill.run import machine
from ssdxl.evaluation import AdherenceReport, adherence_suite, evaluate
from ssdxl.models.presets import unet_stats
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
RUNS = (  # (name, layout, feature KD)
    ("ssd-1b-like", "ssd-1b", "layer"),
    ("vega-like", "vega", "layer"),
    ("vega-like, block KD", "vega", "block"),
    ("vega-like, task loss only", "vega", "none"),
)
OBJECTIVES = {"-": "teacher (reference)", "layer": "layer-level KD", "block": "block-level KD (BK-SDM)",
              "none": "task loss only"}  # fmt: skip
SHOWN = ("all", "colour", "shape", "position", "size", "background", "relation")


@dataclass
class Row:
    name: str
    folder: Path
    layout: str = "-"
    kd: str = "-"
    params: int = 0
    layers: int = 0
    seconds: float = 0.0
    train_minutes: float = 0.0
    gap: float | None = None
    adherence: AdherenceReport | None = None


def main() -> None:
    args = parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [Row("teacher", Path(args.teacher))]
    for name, layout, kd in RUNS:
        folder = args.work / name.replace(", ", "-").replace(" ", "-")
        rows.append(train(args, folder, layout, kd, Row(name, folder, layout, kd)))

    engines = {row.name: Engine.load(str(row.folder), device="cpu", dtype=args.dtype) for row in rows}
    for row in rows:
        config = dict(engines[row.name].base.components.unet.config)
        row.params, row.layers = unet_stats(config)
    speed = measure_speed(engines, args.repeats)
    for row in rows:
        row.seconds = speed[row.name]
        print(f"evaluating {row.name} ...", flush=True)
        suite = adherence_suite(args.n_single, args.n_double, args.seed)
        row.adherence = evaluate(generator(engines[row.name], args.sample_steps), suite, seed=args.seed)
    minutes = (time.perf_counter() - started) / 60
    args.doc.write_text(render(args, rows, minutes))
    print(f"wrote {args.doc} ({minutes:.1f} min)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="shapes", help="teacher model: built-in name or folder (default: shapes)")
    p.add_argument("--work", type=Path, default=Path("/tmp/ssdxl-distill-proof"), help="student folders")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "distillation.md", help="the report to write")
    p.add_argument("--steps", type=int, default=600, help="distillation steps per student (equal for all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-single", type=int, default=50, help="one-object scenes in the adherence suite")
    p.add_argument("--n-double", type=int, default=50, help="two-object scenes in the adherence suite")
    p.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the teacher's)")
    p.add_argument("--repeats", type=int, default=30, help="timed UNet calls per model")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; 1 is steadier on a shared 2-core machine")
    p.add_argument("--dtype", default="auto", help="evaluation precision (auto: bf16 on AMX CPUs)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.teacher and not Path(args.teacher).exists():
        from ssdxl.models import builtin

        resolved = builtin.resolve(args.teacher)
        args.teacher = str(resolved) if resolved else args.teacher
    return args


def train(args: argparse.Namespace, folder: Path, layout: str, kd: str, row: Row) -> Row:
    """Distil one student into ``folder`` (reusing a finished run, resuming an interrupted one)."""
    report_file = folder / "distill-report.json"
    if not report_file.is_file():
        cfg = DistillConfig(
            teacher=args.teacher, out=str(folder), stages=[Stage(layout, args.steps)], kd=kd,
            batch_size=args.batch_size, lr=args.lr, warmup_steps=args.steps // 10, seed=args.seed,
            checkpoint_every=max(1, args.steps // 4), log_every=max(1, args.steps // 20), speed_repeats=0,
            threads=args.threads,
        )  # fmt: skip
        resume = (folder / "distill" / "config.json").is_file()
        distill(DistillConfig.load(folder) if resume else cfg, resume=resume)
    stage = json.loads(report_file.read_text())["stages"][0]
    row.train_minutes = stage["train_seconds"] / 60
    row.gap = stage["output_gap_final"]
    return row


def measure_speed(engines: dict[str, Engine], repeats: int) -> dict[str, float]:
    """Seconds per guided UNet step at the teacher's default size, all models round-robin in one process."""
    teacher = next(iter(engines.values()))
    parts = teacher.base.components
    width, height = int(parts.defaults["width"]), int(parts.defaults["height"])
    inputs = timing_inputs(dict(parts.unet.config), width, height, parts.vae_scale, teacher.device, teacher.dtype)
    return seconds_per_step({n: e.base.components.unet for n, e in engines.items()}, inputs, repeats)


def generator(engine: Engine, steps: int | None):
    def generate(prompt: str, width: int, height: int, seed: int):
        request = GenerationRequest(prompt, width=width, height=height, seed=seed, steps=steps)
        return engine.generate(request).images[0].image

    return generate


def render(args: argparse.Namespace, rows: list[Row], minutes: float) -> str:
    teacher = rows[0]
    m = machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    n_images = args.n_single + args.n_double

    def acc(row: Row, key: str) -> str:
        value = row.adherence.accuracy.get(key) if row.adherence else None
        return "-" if value is None else f"{value:.1%}"

    lines = [
        "# Distillation on the built-in model: what it costs and what it keeps",
        "",
        f"Written by `scripts/distill_proof.py` on {datetime.date.today()} in {minutes:.0f} min. Teacher: "
        f"`{args.teacher}`. Every student was distilled for {args.steps} steps at batch {args.batch_size} "
        f"(lr {args.lr}, shapes world, bf16 autocast), initialised from the teacher's weights "
        "(`ssdxl distill`, see [distillation-method.md](distillation-method.md)).",
        "",
        "## Size, speed, quality",
        "",
        f"Speed: seconds per guided UNet step (batch 2) at the teacher's default size, median of {args.repeats} "
        "calls per model, all models timed round-robin in one process (so machine load falls on all alike). "
        f"Quality: prompt adherence (share of attributes right, judged on {n_images} held-out shapes-world scenes, "
        f"{args.n_single} with one object and {args.n_double} with two) and FID in the shape classifier's "
        "feature space against real renders of the same scenes (lower is better).",
        "",
        "| model | layout | UNet params | transformer layers | s / UNet step | vs teacher | adherence (all) | FID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows[:3]:
        lines.append(
            f"| {r.name} | {r.layout} | {r.params:,} ({r.params / teacher.params:.0%}) | {r.layers} "
            f"| {r.seconds:.4f} | {r.seconds / teacher.seconds:.2f}x | {acc(r, 'all')} "
            f"| {r.adherence.fid:.2f} |"
        )
    lines += [
        "",
        "## Ablation: how the Vega-like student is taught (equal steps)",
        "",
        "Output gap: mean squared difference between student and teacher noise predictions on held-out "
        "inputs after training.",
        "",
        "| objective | " + " | ".join(SHOWN) + " | FID | output gap | train time |",
        "|---|" + "---|" * (len(SHOWN) + 3),
    ]
    for r in [rows[0], *rows[2:]]:
        cells = " | ".join(acc(r, k) for k in SHOWN)
        objective = OBJECTIVES[r.kd]
        gap = "-" if r.gap is None else f"{r.gap:.4f}"
        time_cell = "-" if r is teacher else f"{r.train_minutes:.1f} min"
        lines.append(f"| {objective} | {cells} | {r.adherence.fid:.2f} | {gap} | {time_cell} |")
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}; evaluation dtype "
        f"`{args.dtype}`; 1-minute load average {load:.1f} at the end (other work shares this machine).",
        "",
        f"Re-run: `python scripts/distill_proof.py --teacher {args.teacher} --steps {args.steps} "
        f"--batch-size {args.batch_size} --n-single {args.n_single} --n-double {args.n_double}`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
