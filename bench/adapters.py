"""What adapters cost and save, on full-size random Segmind-Vega at 512² (speed does not depend on the values):

- a rank-64 LoRA on every attention projection of the UNet and both text encoders, per denoising step,
  unfused (peft's extra low-rank matmuls) against fused (merged into the weights for the request, then
  restored) against no LoRA, with the fuse + restore cost counted in the fused run's total;
- an LCM-LoRA run (4 steps, LCM sampler, no guidance) against the model's default (25 steps, guided),
  end to end.

    python bench/adapters.py            # about 10 minutes on 2 cores; writes bench/results/adapters.json
                                        # and the "Adapters" section of docs/performance.md

Every run is in one process, one after another, on the same weights; medians of ``REPEATS`` timed runs
after a warm-up, with the machine's load average next to them.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from ssdxl.paths import scratch_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "adapters.json"
DOC = ROOT / "docs" / "performance.md"
SIZE, STEPS, DEFAULT_STEPS, RANK, REPEATS = 512, 4, 25, 64, 2
PROMPT = "a lighthouse on a cliff at dusk, oil painting"


def measure() -> dict:
    from ssdxl.adapters.synthetic import make_lora
    from ssdxl.models.components import build_components
    from ssdxl.models.presets import get_preset
    from ssdxl.sampling.precision import pick_dtype
    from ssdxl.sampling.request import GenerationRequest
    from ssdxl.speed import machine
    from ssdxl.speed.bench import _engine
    from ssdxl.speed.runtime import Runtime

    components = build_components(get_preset("vega"), seed=0)
    folder = scratch_dir("ssdxl-bench-adapters-")
    lora = make_lora(components, folder / "rank64.safetensors", rank=RANK, scale=0.01)
    lcm = make_lora(components, folder / "lcm-lora-vega.safetensors", rank=RANK, scale=0.01, seed=1)
    dtype = pick_dtype("auto", torch.device("cpu"))
    components.to("cpu", dtype)
    runtime = Runtime.prepare([(components, "")], torch.device("cpu"), backend="torch")
    engine = _engine(components, dtype, runtime)

    def run(steps: int, **request) -> dict:
        marks: list[float] = []
        r = GenerationRequest(PROMPT, width=SIZE, height=SIZE, steps=steps, seed=0, **request)
        start = time.perf_counter()
        result = engine.generate(r, callback=lambda *_: marks.append(time.perf_counter()))
        total = time.perf_counter() - start
        per_step = [b - a for a, b in zip(marks, marks[1:], strict=False)] or [result.timings["denoise"]]
        return {"total": total, "step": statistics.median(per_step), "load": os.getloadavg()[0]}

    def timed(label: str, steps: int, fuse: bool = False, **request) -> dict:
        engine.fuse_loras = fuse
        run(2, **request)  # warm-up: one-time allocations, the LoRA loaded once
        runs = [run(steps, **request) for _ in range(REPEATS)]
        engine.fuse_loras = False
        print(label, runs, flush=True)
        return {
            "total": statistics.median(r["total"] for r in runs),
            "step": statistics.median(r["step"] for r in runs),
            "load": max(r["load"] for r in runs),
        }

    with_lora = {"loras": [(str(lora), 0.8)], "guidance_scale": 7.0}
    results = {
        "machine": machine.describe(),
        "dtype": str(dtype).removeprefix("torch."),
        "lora": {
            "none": timed("no LoRA", STEPS, guidance_scale=7.0),
            "unfused": timed("LoRA unfused", STEPS, **with_lora),
            "fused": timed("LoRA fused", STEPS, fuse=True, **with_lora),
        },
        "lcm": {
            "default": timed("default", DEFAULT_STEPS, guidance_scale=7.0),
            "lcm": timed("LCM-LoRA", STEPS, loras=[(str(lcm), 1.0)]),
        },
    }
    return results


def section(r: dict) -> str:
    d, lora, lcm = r["machine"], r["lora"], r["lcm"]
    none = lora["none"]
    rows = [
        f"| {name} | {v['step']:.2f} | {v['step'] / none['step']:.2f} | {v['total']:.1f} | {v['load']:.1f} |"
        for name, v in (
            ("no LoRA", none),
            ("LoRA, unfused (peft layers)", lora["unfused"]),
            ("LoRA, fused", lora["fused"]),
        )
    ]
    speedup = lcm["default"]["total"] / lcm["lcm"]["total"]
    return "\n".join(
        [
            "## Adapters: LoRA per step, and LCM-LoRA against the default schedule",
            "",
            f"`python bench/adapters.py`: full-size random Segmind-Vega, {SIZE}², {r['dtype']}, "
            f"{d['cpu']} ({d['cores']} cores), one process, medians of {REPEATS} runs after a warm-up.",
            "",
            f"A rank-{RANK} LoRA on every attention projection of the UNet and both text encoders, "
            f"{STEPS} guided steps:",
            "",
            "| run | s per step | x no LoRA | s total | load |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "Fused runs merge the LoRA into the weights for the request and restore the exact weights after it "
            "(`--fuse-loras`, `Engine(fuse_loras=True)`); their total includes that. Unfused is the default: "
            "nothing is copied, and the peft layers cost the per-step difference above.",
            "",
            "| run | steps | guidance | s total | load |",
            "|---|---|---|---|---|",
            *(
                f"| {name} | {steps} | {cfg} | {v['total']:.1f} | {v['load']:.1f} |"
                for name, steps, cfg, v in (
                    ("default schedule", DEFAULT_STEPS, "7", lcm["default"]),
                    ("LCM-LoRA (VegaRT-style)", STEPS, "off", lcm["lcm"]),
                )
            ),
            "",
            f"The LCM-LoRA image is {speedup:.1f}x faster end to end: fewer steps, and one UNet call a step "
            "instead of two (no classifier-free guidance).",
        ]
    )


def main() -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = measure()
    RESULTS.write_text(json.dumps(results, indent=2))
    from ssdxl.speed.report import replace_block

    replace_block(DOC, "adapters", section(results), append="")
    print(f"wrote {RESULTS} and the adapters section of {DOC}")


if __name__ == "__main__":
    main()
