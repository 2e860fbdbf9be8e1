"""What control costs per denoising step, on full-size random weights of one preset (speed does not depend on
their values), all in one process on the same loaded model:

- seconds per guided step at ``--size`` for a plain request, one ControlNet, two ControlNets (random
  ``ControlNetModel.from_unet`` copies of the UNet's encoder, saved as diffusers folders) and one IP-Adapter
  (``ssdxl.control.synthetic.random_ip_adapter``, plain kind, scale 0.6), each as a ratio to the plain step;
- hires fix end to end: ``--size`` → 2x ``--size`` ("Latent" upscaler, strength 0.5, ``--steps`` for both
  passes) against the same request without hires, and the second pass's seconds per step.

    python bench/control.py                     # vega, 512² → 1024², 4 steps, 2 repeats: about 10 minutes
                                                # on 2 cores; writes the "control" section of docs/performance.md
    python bench/control.py --preset sdxl-base --steps 6 --repeats 3 --json out.json

Per-step figures are the intervals between the engine's step callbacks (the first step of a pass, which
also sets the pass up, is left out); the hires second pass's steps are the callbacks after the first
pass's last one. After one warm-up of each request kind (control models read from disk, new shapes), the
kinds take turns, one run each per repeat, so a change in the machine's load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ssdxl.paths import scratch_dir

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
GUIDANCE, IP_SCALE, HIRES_SCALE, HIRES_STRENGTH = 7.0, 0.6, 2, 0.5
KINDS = ("plain", "one ControlNet", "two ControlNets", "IP-Adapter", "hires fix")


def build(preset: str, scale: str, folder: Path) -> tuple[Any, torch.dtype, list[Path], Path]:
    """The engine around random components of ``preset``, two ControlNet folders and an IP-Adapter file."""
    from diffusers import ControlNetModel

    from ssdxl.control.synthetic import random_ip_adapter
    from ssdxl.models.components import build_components
    from ssdxl.models.presets import get_preset
    from ssdxl.sampling.precision import pick_dtype
    from ssdxl.speed.bench import _engine
    from ssdxl.speed.runtime import Runtime

    components = build_components(get_preset(preset, scale), seed=0)
    dtype = pick_dtype("auto", torch.device("cpu"))  # bfloat16 on CPUs with AVX512-BF16 or AMX, as the engine does
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = ControlNetModel.from_unet(components.unet).to(dtype)
        net.save_pretrained(folder / f"controlnet-{seed}")
        nets.append(folder / f"controlnet-{seed}")
        del net
    ip_adapter = random_ip_adapter(components.unet, folder / "ip-adapter")
    components.to("cpu", dtype)
    runtime = Runtime.prepare([(components, "")], torch.device("cpu"), backend="torch")
    return _engine(components, dtype, runtime), dtype, nets, ip_adapter


def requests(size: int, steps: int, nets: list[Path], ip_adapter: Path) -> dict[str, Any]:
    """One request per kind; they differ only in what the kind adds."""
    from PIL import Image, ImageDraw

    from ssdxl.sampling.request import ControlUnit, GenerationRequest, Hires, ImagePrompt

    control_map = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(control_map).rectangle((size // 8, size // 6, size // 2, size * 3 // 4), outline="white", width=4)
    reference = Image.new("RGB", (224, 224), (180, 120, 60))
    base = {"prompt": PROMPT, "width": size, "height": size, "steps": steps, "guidance_scale": GUIDANCE, "seed": 0}
    units = [ControlUnit(model=str(path), image=control_map) for path in nets]
    hires = Hires(scale=HIRES_SCALE, upscaler="Latent", steps=steps, strength=HIRES_STRENGTH)
    return {
        "plain": GenerationRequest(**base),
        "one ControlNet": GenerationRequest(**base, controls=units[:1]),
        "two ControlNets": GenerationRequest(**base, controls=units),
        "IP-Adapter": GenerationRequest(
            **base, image_prompts=[ImagePrompt(model=str(ip_adapter), images=[reference], scale=IP_SCALE)]
        ),
        "hires fix": GenerationRequest(**base, hires=hires),
    }


def run(engine: Any, request: Any) -> dict:
    """One timed request: total wall seconds, the stage timings, and wall / CPU seconds between step callbacks."""
    from ssdxl.speed.timing import Mark

    marks: list[Mark] = []
    start = Mark.now()
    result = engine.generate(request, callback=lambda *_: marks.append(Mark.now()))
    total = Mark.now().since(start)
    first = request.steps  # callbacks of the first pass; any after it belong to the hires pass
    gaps = [b.since(a) for a, b in zip(marks, marks[1:], strict=False)]
    return {
        "total": total.wall,
        "total_cpu": total.cpu,
        "timings": dict(result.timings),
        "step": [g.wall for g in gaps[: first - 1]],
        "step_cpu": [g.cpu for g in gaps[: first - 1]],
        "hires_step": [g.wall for g in gaps[first - 1 :]],
        "hires_step_cpu": [g.cpu for g in gaps[first - 1 :]],
        "load": os.getloadavg()[0],
    }


def summarise(runs: list[dict]) -> dict:
    """Medians (and the spread of the per-step times) over the repeats of one kind."""

    def spread(key: str) -> dict[str, float]:
        values = [v for r in runs for v in r[key]]
        if not values:
            return {}
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}

    stages = sorted({k for r in runs for k in r["timings"]})
    return {
        "total": statistics.median(r["total"] for r in runs),
        "total_cpu": statistics.median(r["total_cpu"] for r in runs),
        "step": spread("step"),
        "step_cpu": spread("step_cpu"),
        "hires_step": spread("hires_step"),
        "hires_step_cpu": spread("hires_step_cpu"),
        "stages": {s: statistics.median(r["timings"].get(s, 0.0) for r in runs) for s in stages},
        "load": max(r["load"] for r in runs),
        "runs": runs,
    }


def measure(preset: str, scale: str, size: int, steps: int, repeats: int) -> dict:
    """Every kind, warmed up once, then ``repeats`` rounds of one run per kind."""
    from ssdxl.speed import machine

    started = machine.describe()
    folder = scratch_dir("ssdxl-bench-control-")
    t0 = time.perf_counter()
    engine, dtype, nets, ip_adapter = build(preset, scale, folder)
    build_s = time.perf_counter() - t0
    print(f"built {preset} ({scale}) in {build_s:.0f} s, {dtype}", flush=True)
    warm = requests(size, 2, nets, ip_adapter)  # two steps: each kind's models loaded, each shape seen once
    timed = requests(size, steps, nets, ip_adapter)
    for kind in KINDS:
        engine.generate(warm[kind])
        print(f"warmed up: {kind}", flush=True)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for i in range(repeats):
        for kind in KINDS:
            runs[kind].append(run(engine, timed[kind]))
            r = runs[kind][-1]
            steps_s, hires_s = [round(s, 2) for s in r["step"]], [round(s, 2) for s in r["hires_step"]]
            print(f"round {i + 1} {kind}: {r['total']:.1f} s, steps {steps_s}, hires steps {hires_s}", flush=True)
    unet = engine.base.components.unet
    return {
        "preset": preset,
        "scale": scale,
        "size": size,
        "hires_size": size * HIRES_SCALE,
        "steps": steps,
        "hires_steps": len(runs["hires fix"][0]["hires_step"]),
        "repeats": repeats,
        "dtype": str(dtype).removeprefix("torch."),
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "build_s": build_s,
        "machine": started,
        "load_start": started["load_average"],
        "load_end": list(os.getloadavg()),
        "kinds": {kind: summarise(kind_runs) for kind, kind_runs in runs.items()},
    }


def section(r: dict) -> str:
    """The docs/performance.md section, between its markers."""
    m, kinds = r["machine"], r["kinds"]
    plain = kinds["plain"]
    base, big, n = r["size"], r["hires_size"], r["steps"]

    def loads(values: list[float]) -> str:
        return "/".join(f"{v:.1f}" for v in values)

    def step_row(kind: str) -> str:
        k = kinds[kind]
        s, c = k["step"], k["step_cpu"]
        return (
            f"| {kind} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | {c['median']:.2f} | "
            f"{s['median'] / plain['step']['median']:.2f} | {c['median'] / plain['step_cpu']['median']:.2f} | "
            f"{k['total']:.1f} | {k['load']:.1f} |"
        )

    hires = kinds["hires fix"]
    hs, hc = hires["hires_step"], hires["hires_step_cpu"]
    ratio = hires["total"] / plain["total"]
    step_ratio = hs["median"] / plain["step"]["median"]
    stages = hires["stages"]
    size_kind = "full-size" if r["scale"] == "full" else "tiny"
    busy = ""
    if max(r["load_start"][0], r["load_end"][0]) > m["cores"]:
        busy = (
            ": more runnable processes than cores, so every figure here is slower than on an idle machine, and "
            "the CPU seconds (process CPU time) grow as well, as OpenMP threads spin while they wait for a core"
        )
    return "\n".join(
        [
            "## Control: ControlNets, IP-Adapter and hires fix",
            "",
            f"`python bench/control.py --preset {r['preset']} --size {base} --steps {n} --repeats {r['repeats']}`: "
            f"{size_kind} random {r['preset']} (UNet {r['unet_parameters'] / 1e9:.2f} B parameters), {r['dtype']}, "
            f"eager PyTorch (the engine's fast path), {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
            f"threads), one process. Each request kind was warmed up once, then the kinds took turns for "
            f"{r['repeats']} rounds; load average {loads(r['load_start'])} at start, {loads(r['load_end'])} at end "
            f"(1/5/15 min){busy}. `x plain` is a kind's median step over the plain median step: 1.40 would mean a "
            "step costs 40% more with it. Compare the ratios within one table, not seconds across runs.",
            "",
            f"Seconds per guided denoising step at {base}², {n} steps (the intervals between step callbacks, "
            f"{plain['step']['n']} per kind), and the whole request:",
            "",
            "| request | s/step median (min-max) | CPU s/step | x plain (wall) | x plain (CPU) | s total | load |",
            "|---|---|---|---|---|---|---|",
            *(step_row(kind) for kind in KINDS[:4]),
            "",
            "ControlNets are random `ControlNetModel.from_unet` copies of the UNet's encoder, each with its own "
            f"{base}² control map; with two, their residuals are summed. Each ControlNet runs once per step on "
            "the guided batch of two, so a unit costs about the UNet's encoder and middle block again. The "
            f"IP-Adapter is h94's plain layout (4 image tokens, scale {IP_SCALE}): one extra key/value "
            "projection per cross-attention layer, and the reference image encoded once per request.",
            "",
            f"Hires fix, {base}² → {big}² (latent upscale, strength {HIRES_STRENGTH}, {n} steps asked for both "
            f"passes: {r['hires_steps']} run at {big}²), end to end against the same request without it:",
            "",
            f"| request | s total | x without hires | {big}² s/step median (min-max) | CPU s/step | x {base}² step "
            "| load |",
            "|---|---|---|---|---|---|---|",
            f"| without hires | {plain['total']:.1f} | 1.00 | | | | {plain['load']:.1f} |",
            f"| hires fix | {hires['total']:.1f} | {ratio:.2f} | {hs['median']:.2f} ({hs['min']:.2f}-{hs['max']:.2f}) "
            f"| {hc['median']:.2f} | {step_ratio:.2f} | {hires['load']:.1f} |",
            "",
            f"The hires request took {ratio:.1f}x as long: its second pass "
            f"({stages.get('hires', 0.0):.1f} s) runs at {HIRES_SCALE**2} times the pixels, where one step costs "
            f"{step_ratio:.1f}x a {base}² step, and the decoder "
            f"works at {big}² ({stages.get('decode', 0.0):.1f} s against {plain['stages'].get('decode', 0.0):.1f} s).",
        ]
    )


def main() -> None:
    """Measure, print the results as JSON, and write the docs section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vega", help="vega (default), ssd-1b or sdxl-base")
    parser.add_argument("--size", type=int, default=512, help="first-pass side in pixels; hires doubles it")
    parser.add_argument("--steps", type=int, default=4, help="steps of each pass (hires runs strength x steps)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up")
    parser.add_argument("--scale", default="full", choices=["full", "tiny"], help="tiny: a quick check of the script")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/performance.md alone")
    parser.add_argument("--from-json", type=Path, help="measure nothing: write the section from saved results")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps must be at least 4: hires runs half of them, and a step time needs two callbacks")
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = measure(args.preset, args.scale, args.size, args.steps, args.repeats)
    text = json.dumps(results, indent=2)
    if not args.from_json:
        print(text)
    if args.json and not args.from_json:
        args.json.write_text(text + "\n")
    if not args.no_doc and results["scale"] == "full":
        from ssdxl.speed.report import replace_block

        replace_block(DOC, "control", section(results), append="")
    else:
        print(section(results))


if __name__ == "__main__":
    main()
