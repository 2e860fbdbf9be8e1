"""Prove the distillation trade-off on a teacher (default: the built-in family's, shapes-xl) and write
docs/distillation.md.

Trains, at equal steps, an SSD-1B-like and a Vega-like student with layer-level KD, the Vega-like
student twice more for the ablation (block-level KD, task loss only), and a VegaRT-like LCM-LoRA
for the Vega-like student (``ssdxl distill lcm``). Then measures, for the teacher and every
student: UNet parameters, seconds per guided UNet step and per image at each model's defaults
(medians, round-robin in one process, ratios to the teacher), and prompt adherence + FID on
held-out shapes-world scenes (``ssdxl.evaluation``), the VegaRT-like one at 4 steps.

    OMP_WAIT_POLICY=PASSIVE python scripts/distill_proof.py --teacher shapes-xl
    python scripts/distill_proof.py --only ssd-1b-like,vega-like,vegart-like &   # on 2+ cores, in parallel:
    python scripts/distill_proof.py --only vega-like-block-KD,vega-like-task-loss-only; wait  # then the line above
    python scripts/distill_proof.py --ship    # also install the students as built-ins TEACHER-ssd1b, TEACHER-vega
                                              # and the LCM-LoRA as loras/TEACHER-vega-rt.safetensors
    python scripts/distill_proof.py --teacher DIR --steps 2 --lcm-steps 2 --n-single 2 --n-double 2   # smoke test

Cost on the project's 2-core CPU machine with the built-in teacher (one thread per process): 0.5-0.6 s
per step at batch 32 with KD, 0.45 s without, so 8-10 minutes per student at the default 1,000 steps;
measuring and evaluating (5 models x 100 images) 2.5 minutes. In one process about 40 minutes; with
two ``--only`` processes (one per core) about 22.

Finished runs are reused and interrupted ones resumed, so the same command continues after a stop.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ssdxl.cli.main import quiet_libraries
from ssdxl.distill import DistillConfig, Stage, distill
from ssdxl.distill.measure import seconds_per_step, timing_inputs
from ssdxl.distill.run import machine
from ssdxl.evaluation import AdherenceReport, adherence_suite, evaluate
from ssdxl.evaluation.adherence import suite_scale
from ssdxl.models.presets import unet_stats
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

ROOT = Path(__file__).resolve().parents[1]
RT = "vegart-like"  # the Vega-like student with its LCM-LoRA, sampled in RT_STEPS
RT_STEPS = 4
RUNS = (  # (name, layout, feature KD)
    ("ssd-1b-like", "ssd-1b", "layer"),
    ("vega-like", "vega", "layer"),
    ("vega-like, block KD", "vega", "block"),
    ("vega-like, task loss only", "vega", "none"),
)
OBJECTIVES = {"-": "teacher (reference)", "layer": "layer-level KD", "block": "block-level KD (BK-SDM)",
              "none": "task loss only"}  # fmt: skip
SHOWN = ("colour", "shape", "position", "size", "background", "both_objects", "relation", "all")
MEAN_OF = ("background", "colour", "shape", "position", "size", "both_objects", "relation")


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
    lora: Path | None = None  # the VegaRT-like row: its LCM-LoRA, sampled in RT_STEPS steps
    image_seconds: float = 0.0


def main() -> None:
    args = parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = [Row("teacher", Path(args.teacher))]
    for name, layout, kd in RUNS:
        if args.only and slug(name) not in args.only:
            continue
        folder = args.work / slug(name)
        rows.append(train(args, folder, layout, kd, Row(name, folder, layout, kd)))
    vega = args.work / slug("vega-like")
    if not args.only or RT in args.only:
        lora = train_lcm(args, vega)
        log = [json.loads(line) for line in (args.work / f"{RT}.run" / "log.jsonl").read_text().splitlines()]
        minutes = max((entry.get("time", 0.0) for entry in log), default=0.0) / 60
        rows.append(Row(RT, vega, "vega + LCM-LoRA", lora=lora, train_minutes=minutes))
    if args.only:
        print(f"trained {', '.join(r.name for r in rows[1:])}; run without --only to measure and write the report")
        return

    engines = {row.folder: Engine.load(str(row.folder), device="cpu", dtype=args.dtype) for row in rows}
    for row in rows:
        config = dict(engines[row.folder].base.components.unet.config)
        row.params, row.layers = unet_stats(config)
    speed = measure_speed({r.name: engines[r.folder] for r in rows if r.lora is None}, args.repeats)
    per_image = measure_images(rows, engines, args.image_repeats)
    for row in rows:
        row.seconds = speed.get(row.name, speed["vega-like"])
        row.image_seconds = per_image[row.name]
        print(f"evaluating {row.name} ...", flush=True)
        suite = adherence_suite(args.n_single, args.n_double, args.seed)
        engine = engines[row.folder]
        scale = suite_scale(engine.base.components.defaults)
        row.adherence = evaluate(generator(engine, row, args.sample_steps), suite, seed=args.seed, scale=scale)
    minutes = (time.perf_counter() - started) / 60
    args.doc.write_text(render(args, rows, minutes))
    print(f"wrote {args.doc} ({minutes:.1f} min)")
    if args.ship:
        teacher = args.teacher_name
        for row, suffix in ((rows[1], "ssd1b"), (rows[2], "vega")):
            print(f"installed built-in model at {ship(row.folder, f'{teacher}-{suffix}', teacher)}")
        lora = ROOT / "src" / "ssdxl" / "builtin" / "loras" / f"{teacher}-vega-rt.safetensors"
        shutil.copy(rows[-1].lora, lora)
        print(f"installed its LCM-LoRA at {lora}")


def mean(row: Row) -> float:
    """One adherence figure: the mean of the per-attribute accuracies (each attribute counts once)."""
    return sum(row.adherence.accuracy[k] for k in MEAN_OF) / len(MEAN_OF)


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets against this run's figures."""
    teacher, ssd, vega_layer, vega_block, vega_none = rows[:5]
    lines = ["## Targets", ""]

    def verdict(ok: bool) -> str:
        return "reached" if ok else "**missed**"

    for student, fewer_min, faster_min in ((ssd, 0.45, 1.5), (vega_layer, 0.65, 2.0)):
        fewer = 1 - student.params / teacher.params
        faster = teacher.seconds / student.seconds
        lost = (mean(teacher) - mean(student)) * 100
        lines.append(
            f"- {student.name} student: >= {fewer_min:.0%} fewer UNet parameters: {fewer:.1%} fewer "
            f"({verdict(fewer >= fewer_min)}); >= {faster_min}x faster per step: {faster:.2f}x "
            f"({verdict(faster >= faster_min)}); adherence within 3 points of the teacher: {mean(teacher):.1%} -> "
            f"{mean(student):.1%}, {lost:+.1f} points lost ({verdict(lost <= 3)})."
        )
    for row in rows[5:]:
        lost = (mean(teacher) - mean(row)) * 100
        lines.append(f"- {row.name} at {RT_STEPS} steps within 5 points of the teacher at its default steps: "
                     f"{mean(row):.1%}, {lost:+.1f} points lost ({verdict(lost <= 5)}); "
                     f"{teacher.image_seconds / row.image_seconds:.1f}x less time per image.")  # fmt: skip
    kd_gain = (mean(vega_layer) - mean(vega_none)) * 100
    block_gain = (mean(vega_block) - mean(vega_none)) * 100
    lines.append(f"- Knowledge distillation beats the task loss alone by >= 5 points at equal steps (Vega-like): "
                 f"layer-level KD {kd_gain:+.1f} points ({verdict(kd_gain >= 5)}), block-level KD "
                 f"{block_gain:+.1f} points.")  # fmt: skip
    if 1 - ssd.params / teacher.params < 0.45:
        lines += ["", "Why the parameter shares fall short: the SSD-1B and Vega rules remove transformer layers and no "
                  "resnets, and the SSD-1B rule keeps the deepest level's last up unit whole. SDXL has three up units "
                  "there and its middle level is half as wide as its deepest, so the rules take 48% and 71% of it "
                  "(`ssdxl distill plan --teacher sdxl-base`); a teacher with fewer up units or wider shallow levels "
                  "(this one has two, and `shapes`' equal widths) keeps more."]  # fmt: skip
    if kd_gain < 5 and vega_none.gap and vega_layer.gap:
        lines += ["", f"Why KD shows no adherence gain here: every Vega-like student is within a point of the "
                  f"teacher, so adherence cannot tell them apart. How closely each copies the teacher still does: "
                  f"the output gap after layer-level KD is {vega_layer.gap:.4f}, after the task loss alone "
                  f"{vega_none.gap:.4f} ({vega_none.gap / vega_layer.gap:.1f}x further). This teacher grew the "
                  f"layers a student drops from the identity (see builtin-model.md), so they likely carry little "
                  f"that the task loss alone cannot recover at equal steps."]  # fmt: skip
    return lines


def slug(name: str) -> str:
    """A student's folder name and ``--only`` key: 'vega-like, block KD' -> 'vega-like-block-KD'."""
    return name.replace(", ", "-").replace(" ", "-")


def ship(student: Path, name: str, teacher: str) -> Path:
    """Install a student as built-in model ``name``: its UNet, scheduler and settings only; the text
    encoders and VAE (frozen during distillation, so identical) come from the teacher's built-in folder."""
    from ssdxl.models import builtin

    if builtin.resolve(teacher) is None:
        raise SystemExit(f"--ship needs a built-in teacher; {teacher} is not one")
    target = ROOT / "src" / "ssdxl" / "builtin" / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for part in ("unet", "scheduler"):
        shutil.copytree(student / part, target / part)
    shutil.copy(student / "model_index.json", target / "model_index.json")
    info = json.loads((student / "ssdxl.json").read_text())
    (target / "ssdxl.json").write_text(json.dumps({**info, "name": name, "components_from": teacher}, indent=2) + "\n")
    return target


def train_lcm(args: argparse.Namespace, student: Path) -> Path:
    """The VegaRT-like LCM-LoRA of the Vega-like student (``ssdxl distill lcm``; reused when finished, resumed when
    interrupted), as ``scripts/finetune_proof.py`` makes ``shapes-rt``."""
    out = args.work / f"{RT}.safetensors"
    if out.is_file():
        return out
    command = ["ssdxl", "distill", "lcm", "--teacher", str(student), "--data", "shapes", "-o", str(out),
               "--steps", str(args.lcm_steps),
               "--batch-size", "16", "--rank", "16", "--lr", "5e-4", "--checkpoint-every", "250", "--seed", "0",
               "--threads", str(args.threads)]  # fmt: skip
    if (args.work / f"{RT}.run" / "log.jsonl").is_file():
        command = [*command[:3], "-o", str(out), "--resume"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="shapes-xl", help="teacher: built-in name or folder (default: shapes-xl)")
    p.add_argument("--work", type=Path, default=Path("/tmp/ssdxl-distill-proof"), help="student folders")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "distillation.md", help="the report to write")
    p.add_argument("--steps", type=int, default=1000, help="distillation steps per student (equal for all)")
    p.add_argument("--lcm-steps", type=int, default=1000, help="LCM-LoRA distillation steps (VegaRT-like)")
    p.add_argument("--image-repeats", type=int, default=5, help="timed images per model (default settings)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-single", type=int, default=50, help="one-object scenes in the adherence suite")
    p.add_argument("--n-double", type=int, default=50, help="two-object scenes in the adherence suite")
    p.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the teacher's)")
    p.add_argument("--repeats", type=int, default=30, help="timed UNet calls per model")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; 1 is steadier on a shared 2-core machine")
    p.add_argument("--dtype", default="auto", help="evaluation precision (auto: bf16 on AMX CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only",
        type=lambda v: set(v.split(",")),
        default=None,
        help="train only these students (comma-separated folder names, e.g. ssd-1b-like) and stop",
    )
    p.add_argument("--ship", action="store_true", help="install the students as built-ins TEACHER-ssd1b and "
                   "TEACHER-vega, and the LCM-LoRA as loras/TEACHER-vega-rt (a built-in teacher only)")
    args = p.parse_args()
    known = [slug(name) for name, _, _ in RUNS] + [RT]
    unknown = (args.only or set()) - set(known)
    if unknown:
        p.error(f"--only: unknown students {sorted(unknown)}; choose from {known}")
    args.teacher_name = args.teacher  # as given (a built-in name stays a name in the report)
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


def request_for(row: Row, prompt: str, seed: int, steps: int | None, **size: int) -> GenerationRequest:
    """The row's model at its defaults; the VegaRT-like row with its LCM-LoRA (which picks the LCM sampler and
    guidance 1) in RT_STEPS steps."""
    if row.lora is not None:
        return GenerationRequest(prompt, seed=seed, steps=RT_STEPS, loras=[(str(row.lora), 1.0)], **size)
    return GenerationRequest(prompt, seed=seed, steps=steps, **size)


def generator(engine: Engine, row: Row, steps: int | None):
    def generate(prompt: str, width: int, height: int, seed: int):
        return engine.generate(request_for(row, prompt, seed, steps, width=width, height=height)).images[0].image

    return generate


def measure_images(rows: list[Row], engines: dict[Path, Engine], repeats: int) -> dict[str, float]:
    """Median seconds per image at each model's default size and settings, models round-robin in one process."""
    prompt = "a large red circle to the left of a small blue square on a white background"
    spent: dict[str, list[float]] = {row.name: [] for row in rows}
    for repeat in range(repeats + 1):  # the first round warms up (compiles, caches) and is not counted
        for row in rows:
            started = time.perf_counter()
            engines[row.folder].generate(request_for(row, prompt, seed=repeat, steps=None))
            if repeat:
                spent[row.name].append(time.perf_counter() - started)
    return {name: statistics.median(times) if times else float("nan") for name, times in spent.items()}


def render(args: argparse.Namespace, rows: list[Row], minutes: float) -> str:
    teacher = rows[0]
    m = machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    n_images = args.n_single + args.n_double

    def acc(row: Row, key: str) -> str:
        value = row.adherence.accuracy.get(key) if row.adherence else None
        return "-" if value is None else f"{value:.1%}"

    lines = [
        "# Distillation on the built-in family: what it costs and what it keeps",
        "",
        f"Written by `scripts/distill_proof.py` on {datetime.date.today()} (measuring and evaluating took "
        f"{minutes:.0f} min; each student's training time is in the tables). Teacher: "
        f"`{args.teacher_name}`. Every student was distilled for {args.steps} steps at batch {args.batch_size} "
        f"(lr {args.lr}, shapes world, bf16 autocast), initialised from the teacher's weights "
        "(`ssdxl distill`, see [distillation-method.md](distillation-method.md)).",
        "",
        "## Size, speed, quality",
        "",
        f"Speed: seconds per guided UNet step (batch 2) at the teacher's default size, median of {args.repeats} "
        f"calls per model, and seconds per image at each model's default settings (median of {args.image_repeats}; "
        f"the {RT} row: its LCM-LoRA, {RT_STEPS} steps, guidance 1, the LoRA applied at run time), all models "
        "timed round-robin in one process (so machine load falls on all alike). "
        f"Quality: prompt adherence judged on {n_images} held-out shapes-world scenes ({args.n_single} with one "
        f"object, {args.n_double} with two): *adherence* is the mean of the per-attribute accuracies "
        f"({', '.join(MEAN_OF)}), *all right* the share of prompts with every attribute right; FID is taken in "
        "the shape classifier's feature space against real renders of the same scenes (lower is better).",
        "",
        "| model | layout | UNet params | transformer layers | s / UNet step | step time vs teacher | s / image "
        "| adherence | all right | FID | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in [*rows[:3], *rows[5:]]:
        lines.append(
            f"| {r.name} | {r.layout} | {r.params:,} ({r.params / teacher.params:.0%}) | {r.layers} "
            f"| {r.seconds:.4f} | {r.seconds / teacher.seconds:.2f}x | {r.image_seconds:.3f} | {mean(r):.1%} "
            f"| {acc(r, 'all')} | {r.adherence.fid:.2f} | {'-' if r is teacher else f'{r.train_minutes:.1f} min'} |"
        )
    lines += [
        "",
        "## Ablation: how the Vega-like student is taught (equal steps)",
        "",
        "Output gap: mean squared difference between student and teacher noise predictions on held-out "
        "inputs after training.",
        "",
        "| objective | adherence | " + " | ".join(SHOWN) + " | FID | output gap | train time |",
        "|---|" + "---|" * (len(SHOWN) + 4),
    ]
    for r in [rows[0], *rows[2:5]]:
        cells = f"{mean(r):.1%} | " + " | ".join(acc(r, k) for k in SHOWN)
        objective = OBJECTIVES[r.kd]
        gap = "-" if r.gap is None else f"{r.gap:.4f}"
        time_cell = "-" if r is teacher else f"{r.train_minutes:.1f} min"
        lines.append(f"| {objective} | {cells} | {r.adherence.fid:.2f} | {gap} | {time_cell} |")
    lines += ["", *targets(rows)]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['device']}; evaluation dtype "
        f"`{args.dtype}`; 1-minute load average {load:.1f} at the end (other work shares this machine).",
        "",
        f"Re-run: `python scripts/distill_proof.py --teacher {args.teacher_name} --steps {args.steps} "
        f"--lcm-steps {args.lcm_steps} "
        f"--batch-size {args.batch_size} --n-single {args.n_single} --n-double {args.n_double}`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
