"""Prove the built-in ControlNet controls and hires fix stays on prompt; writes docs/control.md's tables.

ControlNet: each prompt of a held-out scene is drawn with the layout map of *another* held-out scene
(other objects, other places), so the prompt alone cannot put the objects where the map does. The
generated objects (``ssdxl.evaluation.segment``: every pixel far from the background colour) are
compared with the map's silhouettes by IoU, at control scales 0 (no control: chance), 0.5 and 1; and,
for reference, with a map of the prompt's own scene (prompt and map agree).

Hires fix: the held-out adherence suite at the model's size, and with ``--hires 2x`` (latent upscale,
10 second-pass steps at strength 0.5), judged on the 2x image scaled back to the scene's size.

    python scripts/control_proof.py                 # both; about 15 minutes on 2 cores
    python scripts/control_proof.py --n 4 --no-doc  # a smoke test
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ssdxl.data.shapes import Scene, control_map, object_mask
from ssdxl.evaluation import adherence_suite, evaluate
from ssdxl.evaluation.segment import segment
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import ControlUnit, GenerationRequest, Hires
from ssdxl.speed.report import measured_note, replace_block

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "control.md"
CONTROLNET = "shapes-layout"  # built in: ssdxl/builtin/controlnets/
SCALES = (0.0, 0.5, 1.0)
SHOWN = ("colour", "shape", "position", "size", "background", "both_objects", "relation", "all")


def iou(image: Image.Image, scene: Scene) -> float:
    """IoU of the image's foreground with ``scene``'s object silhouettes."""
    drawn = segment(image.resize((scene.width, scene.height), Image.LANCZOS)).labels > 0
    wanted = object_mask(scene)
    union = np.logical_or(drawn, wanted).sum()
    return float(np.logical_and(drawn, wanted).sum() / union) if union else 1.0


def control_rows(engine: Engine, suite: list[Scene], controlnet: str) -> str:
    """Mean IoU with the map's objects, per scale, for maps of other scenes and of the prompt's own."""
    others = suite[1:] + suite[:1]  # each prompt meets the next scene's map
    lines = [
        "| control scale | IoU with another scene's map | IoU with its own scene's map | s / image |",
        "|---|---|---|---|",
    ]
    for scale in SCALES:
        row = []
        started = time.perf_counter()
        for pairs in (zip(suite, others, strict=True), zip(suite, suite, strict=True)):
            scores = []
            for i, (scene, mapped) in enumerate(pairs):
                unit = ControlUnit(controlnet, control_map(mapped, "layout"), scale=scale)
                request = GenerationRequest(
                    scene.caption, width=scene.width, height=scene.height, seed=i, controls=[unit]
                )
                scores.append(iou(engine.generate(request).images[0].image, mapped))
            row.append(float(np.mean(scores)))
        seconds = (time.perf_counter() - started) / (2 * len(suite))
        print(f"scale {scale}: IoU other {row[0]:.3f}, own {row[1]:.3f}", flush=True)
        lines.append(f"| {scale:g} | {row[0]:.3f} | {row[1]:.3f} | {seconds:.2f} |")
    return "\n".join(lines)


HIRES_RUNS = (
    ("1x", None),
    ("2x Latent, strength 0.5", Hires(2, upscaler="Latent", steps=10, strength=0.5)),
    ("2x Lanczos, strength 0.3", Hires(2, upscaler="Lanczos", steps=10, strength=0.3)),
    ("2x Lanczos, strength 0.15", Hires(2, upscaler="Lanczos", steps=10, strength=0.15)),
    ("1.5x Lanczos, strength 0.3", Hires(1.5, upscaler="Lanczos", steps=10, strength=0.3)),
)


class Timed:
    """``generate`` for ``evaluate``: the engine's image at the scene's size (a hires image scaled back), timed."""

    def __init__(self, engine: Engine, hires: Hires | None):
        self.engine, self.hires, self.spent, self.sizes = engine, hires, 0.0, set()

    def __call__(self, prompt: str, width: int, height: int, seed: int) -> Image.Image:
        started = time.perf_counter()
        request = GenerationRequest(prompt, width=width, height=height, seed=seed, hires=self.hires)
        image = self.engine.generate(request).images[0].image
        self.spent += time.perf_counter() - started
        self.sizes.add(image.size)
        return image.resize((width, height), Image.LANCZOS)


def hires_rows(engine: Engine, suite: list[Scene]) -> str:
    lines = ["| run (10 second-pass steps) | sizes | " + " | ".join(SHOWN) + " | s / image |"]
    lines.append("|" + "---|" * (len(SHOWN) + 3))
    for name, hires in HIRES_RUNS:
        generate = Timed(engine, hires)
        report = evaluate(generate, suite)
        cells = [f"{report.accuracy[key]:.1%}" if key in report.accuracy else "–" for key in SHOWN]
        sizes = f"{min(generate.sizes)[0]}–{max(generate.sizes)[0]} px wide"
        print(f"{name}: all {report.accuracy['all']:.1%}", flush=True)
        lines.append(f"| {name} | {sizes} | " + " | ".join(cells) + f" | {generate.spent / len(suite):.2f} |")
    return "\n".join(lines)


def measured(n: int) -> str:
    return measured_note(f"{n}+{n} held-out prompts, seed 0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="one-object and two-object prompts each")
    parser.add_argument("--part", choices=("all", "control", "hires"), default="all")
    parser.add_argument("--controlnet", default=CONTROLNET, help="the ControlNet (name or folder) to measure")
    parser.add_argument("--no-doc", action="store_true", help="print the tables, leave docs/control.md alone")
    args = parser.parse_args()
    engine = Engine.load(device="cpu", dtype="float32")
    suite = adherence_suite(args.n, args.n)
    sections = {}
    if args.part in ("all", "control"):
        sections["controlnet"] = control_rows(engine, suite, args.controlnet) + measured(args.n)
    if args.part in ("all", "hires"):
        sections["hires"] = hires_rows(engine, suite) + measured(args.n)
    for key, text in sections.items():
        print(f"\n## {key}\n{text}")
    if not args.no_doc:
        for key, text in sections.items():
            replace_block(DOC, f"proof:{key}", text)


if __name__ == "__main__":
    main()
