"""Prove ``ssdxl finetune`` and ``ssdxl distill lcm`` on the built-in models; writes docs/finetuning.md's tables.

A concept ``shapes`` never saw -- the shape *heart* and the colour *pink* (``ssdxl.data.shapes``
novel vocabulary) -- is taught from 20 images by a LoRA, by DreamBooth (a LoRA with prior
preservation) and, for the shape alone, by a textual-inversion embedding. Each is judged on held-out
prompts with the concept (combinations none of the 20 images shows) and on the base held-out suite
without it, against the untuned model in the same run. Then the few-step adapters: an LCM-LoRA
distilled from ``shapes`` and one from ``shapes-ssd1b``, judged at 1, 2, 4 and 8 steps against their
teacher at its default 20, with seconds per image at each (same process, one after another).

    python scripts/finetune_proof.py                      # everything (resumes / reuses earlier runs)
    python scripts/finetune_proof.py --ship               # also copy the LCM-LoRAs into ssdxl/builtin/loras/
    python scripts/finetune_proof.py --quick              # smoke test: tiny runs, tiny suites

Every training run is the CLI command a user would type (printed as it starts); a finished run is
reused and an interrupted one resumed, so the same command continues after a stop.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssdxl.data.shapes import OBJECT_COLOURS, Scene, ShapesWorld, concept_scenes, write_scenes
from ssdxl.evaluation import AdherenceReport, adherence_suite, evaluate
from ssdxl.evaluation.adherence import novel_suite
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed.report import measured_note, replace_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "finetuning.md"
BUILTIN_LORAS = ROOT / "src" / "ssdxl" / "builtin" / "loras"
TOKEN = "heartshape"  # the embedding's word (and file name: ssdxl calls embeddings by file name)
SHOWN = ("colour", "shape", "position", "size", "background", "both_objects", "relation", "all")


def training_runs(work: Path, quick: bool) -> dict[str, list[str]]:
    """name -> the ``ssdxl`` command that makes ``work/<name>.safetensors``."""
    steps = (lambda n: "2") if quick else str
    common = ["--model", "shapes", "--checkpoint-every", "50", "--log-every", "25", "--seed", "0"]
    prior = ["--class-data", str(work / "prior")]  # the model's own images of base prompts: prior preservation
    lcm = ["--steps", steps(1000), "--batch-size", "16", "--rank", "16", "--lr", "5e-4", "--checkpoint-every", "250",
           "--log-every", "50", "--seed", "0"]  # fmt: skip
    return {
        "concept-lora": ["finetune", "lora", *common, "--data", str(work / "concept"), *prior, "--rank", "16",
                         "--train-text-encoder", "--steps", steps(400), "--batch-size", "8", "--lr", "5e-4"],
        "concept-lora-no-prior": ["finetune", "lora", *common, "--data", str(work / "concept"), "--rank", "16",
                                  "--train-text-encoder", "--steps", steps(400), "--batch-size", "8", "--lr", "5e-4"],
        "pink-heart-dreambooth": ["finetune", "dreambooth", *common, "--data", str(work / "pink-heart"), *prior,
                                  "--instance-prompt", "a pink heart", "--rank", "16", "--train-text-encoder",
                                  "--steps", steps(400), "--batch-size", "8", "--lr", "5e-4"],
        TOKEN: ["finetune", "embedding", *common, "--data", str(work / "heart"), "--replace", "heart",
                "--vectors", "2", "--steps", steps(400), "--batch-size", "8", "--lr", "5e-3"],
        "shapes-rt": ["distill", "lcm", "--teacher", "shapes", *lcm],
        "shapes-ssd1b-rt": ["distill", "lcm", "--teacher", "shapes-ssd1b", *lcm],
    }  # fmt: skip


def datasets(work: Path) -> dict[str, list[Scene]]:
    """The three 20-image training sets (rendered scenes with their captions)."""
    base_colours = tuple(OBJECT_COLOURS)
    return {
        # hearts and pink objects, alone and in pairs; the held-out novel pairs never appear
        "concept": concept_scenes(20, 0, split="train", two_object_fraction=0.25),
        # one subject, the pink heart, anywhere: DreamBooth's instance images
        "pink-heart": concept_scenes(20, 0, split="all", concept=("heart",), shapes=("heart",), colours=("pink",)),
        # hearts in the base colours (not green / blue: held out), for the shape's embedding
        "heart": concept_scenes(20, 0, split="train", concept=("heart",), colours=base_colours),
    }


def prior_images(work: Path, n: int) -> None:
    """``n`` of the model's own images of base-world training captions, with their captions: the
    regularisation set whose loss keeps what the model knew (DreamBooth's prior preservation, kohya's
    regularisation images)."""
    folder = work / "prior"
    if folder.is_dir():
        return
    engine = Engine.load("shapes", device="cpu", dtype="float32")
    tmp = folder.with_name("prior.partial")
    tmp.mkdir(exist_ok=True)
    world = ShapesWorld(seed=7, two_object_fraction=0.4)
    for i in range(n):
        scene = world.scene(i)
        image = engine.generate(GenerationRequest(scene.caption, width=scene.width, height=scene.height, seed=i))
        image.images[0].image.save(tmp / f"{i:05d}.png")
        (tmp / f"{i:05d}.txt").write_text(scene.caption + "\n")
    tmp.rename(folder)


def train(work: Path, name: str, args: list[str]) -> Path:
    """Run (or resume, or reuse) one training command; returns its output file."""
    out = work / f"{name}.safetensors"
    run = work / f"{name}.run"
    steps = int(args[args.index("--steps") + 1])
    done = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] if run.exists() else []
    last = max((d["step"] for d in done if "checkpoint" in d), default=0)
    if last >= steps and out.is_file():
        return out
    command = ["ssdxl", *args, "-o", str(out)] + (["--resume"] if last else [])
    if last:  # --resume keeps the run's settings: only the output and how long
        command = ["ssdxl", *args[:2], "-o", str(out), "--resume", "--steps", str(steps)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return out


@dataclass
class Result:
    name: str
    report: AdherenceReport
    seconds: float  # per image, generation only


def judge(engine: Engine, name: str, suite: list[Scene], *, loras=(), steps=None, rewrite: Callable[[str], str] = str,
          seed: int = 0) -> Result:  # fmt: skip
    """Adherence of ``engine`` (with ``loras``) on ``suite``, and seconds per generated image."""
    spent = 0.0

    def generate(prompt: str, width: int, height: int, image_seed: int):
        nonlocal spent
        request = GenerationRequest(rewrite(prompt), width=width, height=height, seed=image_seed, steps=steps,
                                    loras=list(loras))  # fmt: skip
        started = time.perf_counter()
        image = engine.generate(request).images[0].image
        spent += time.perf_counter() - started
        return image

    report = evaluate(generate, suite, seed=seed)
    print(f"{name}: all {report.accuracy['all']:.1%}  ({spent / len(suite):.3f} s/image)", flush=True)
    return Result(name, report, spent / len(suite))


def table(rows: list[Result], baseline: Result | None = None, seconds: bool = False) -> str:
    head = ["model", *SHOWN, "FID"] + (["s / image", "UNet calls"] if seconds else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.name]
        for key in SHOWN:
            value = row.report.accuracy.get(key)
            cells.append("–" if value is None else f"{value:.1%}")
        cells.append(f"{row.report.fid:.1f}")
        if seconds:
            cells.append(f"{row.seconds:.3f}")
            steps = int(re.search(r"(\d+) steps?", row.name).group(1))
            cells.append(str(steps * (2 if "teacher" in row.name else 1)))  # the teacher's CFG: two calls a step
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RT_RUNS = ("shapes-rt", "shapes-ssd1b-rt")


def concept_sections(work: Path, n: int) -> dict[str, str]:
    """The new concept (LoRA, DreamBooth-LoRA, embedding) against the untuned model, and the control suite."""
    novel, control = novel_suite(n, n), adherence_suite(n, n)
    taught = datasets(work)["concept"]
    pairs = {(o.colour, o.kind) for scene in taught for o in scene.objects}
    captions = {scene.caption for scene in taught}
    placed = [s for s in concept_scenes(40 * n, 1, split="train", two_object_fraction=0.5)
              if s.caption not in captions and all((o.colour, o.kind) in pairs for o in s.objects)]  # fmt: skip
    pink_hearts = novel_suite(n, 0, heldout={("pink", "heart")})
    hearts = novel_suite(n, n, heldout={("green", "heart"), ("blue", "heart")})

    def as_token(prompt: str) -> str:
        return re.sub(r"\bheart\b", TOKEN, prompt)

    base = Engine.load("shapes", device="cpu", dtype="float32", lora_dirs=(work,), embedding_dirs=(work,))
    tuned = {"+ LoRA (20 images)": "concept-lora", "+ LoRA, no prior preservation": "concept-lora-no-prior",
             "+ DreamBooth-LoRA (pink heart)": "pink-heart-dreambooth"}  # fmt: skip
    concept = [judge(base, "shapes (untuned)", novel)]
    concept += [judge(base, label, novel, loras=[(lora, 1.0)]) for label, lora in tuned.items()]
    new_scenes = [judge(base, "shapes (untuned)", placed[: 2 * n])]
    new_scenes += [judge(base, label, placed[: 2 * n], loras=[(lora, 1.0)]) for label, lora in tuned.items()]
    subject = [judge(base, "shapes (untuned)", pink_hearts)]
    subject += [judge(base, label, pink_hearts, loras=[(lora, 1.0)]) for label, lora in tuned.items()]
    word = [judge(base, "shapes (untuned), 'heart'", hearts),
            judge(base, f"shapes + embedding '{TOKEN}'", hearts, rewrite=as_token)]  # fmt: skip
    control_rows = [judge(base, "shapes (untuned)", control)]
    control_rows += [judge(base, label, control, loras=[(lora, 1.0)]) for label, lora in tuned.items()]
    note = measured(n)
    tables = {"concept": concept, "scenes": new_scenes, "subject": subject, "word": word, "control": control_rows}
    return {key: table(rows) + note for key, rows in tables.items()}


def rt_sections(work: Path, n: int) -> dict[str, str]:
    """Each LCM-LoRA at 1, 2, 4, 8 steps against its teacher at 20, on the base held-out suite."""
    control = adherence_suite(n, n)
    tables = []
    for teacher, adapter in zip(("shapes", "shapes-ssd1b"), RT_RUNS, strict=True):
        engine = Engine.load(teacher, device="cpu", dtype="float32", lora_dirs=(work,))
        rows = [judge(engine, f"{teacher}, 20 steps (teacher)", control)]
        for steps in (1, 2, 4, 8):
            label = f"{teacher} + {adapter}, {steps} step{'s' if steps > 1 else ''}"
            rows.append(judge(engine, label, control, loras=[(adapter, 1.0)], steps=steps))
        tables.append(table(rows, seconds=True))
    return {"rt": "\n\n".join(tables) + measured(n)}


def measured(n: int) -> str:
    return measured_note(f"{n}+{n} prompts, seed 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/finetune-proof"))
    parser.add_argument("--quick", action="store_true", help="2-step runs and 4-prompt suites (a smoke test)")
    parser.add_argument("--ship", action="store_true", help="copy the LCM-LoRAs into ssdxl/builtin/loras/")
    parser.add_argument("--no-doc", action="store_true", help="print the tables, leave docs/finetuning.md alone")
    parser.add_argument("--part", choices=("all", "concept", "rt"), default="all",
                        help="only the concept proofs or only the LCM-LoRAs (two processes on two cores)")
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    n = 2 if args.quick else 25

    runs = training_runs(work, args.quick)
    wanted = {"all": list(runs), "rt": list(RT_RUNS), "concept": [r for r in runs if r not in RT_RUNS]}[args.part]
    if args.part != "rt":
        for name, scenes in datasets(work).items():
            if not (work / name).is_dir():
                write_scenes(scenes, work / name)
        prior_images(work, 8 if args.quick else 200)
    outputs = {name: train(work, name, runs[name]) for name in wanted}

    sections: dict[str, str] = {}
    if args.part != "rt":
        sections |= concept_sections(work, n)
    if args.part != "concept":
        sections |= rt_sections(work, 2 * n)  # few-step runs are cheap: the base model's usual 50+50 suite
        if args.ship and not args.quick:
            BUILTIN_LORAS.mkdir(parents=True, exist_ok=True)
            for adapter in RT_RUNS:
                shutil.copyfile(outputs[adapter], BUILTIN_LORAS / f"{adapter}.safetensors")
    for key, text in sections.items():
        print(f"\n## {key}\n{text}")
    if not args.no_doc and not args.quick:
        for key, text in sections.items():
            replace_block(DOC, f"proof:{key}", text)


if __name__ == "__main__":
    main()
