#!/usr/bin/env python
"""Benchmark stable-diffusion.cpp (through stable-diffusion-cpp-python) as a baseline.

Standalone: it does not import ssdxl and runs in its own environment, where pip builds
stable-diffusion.cpp from source for this CPU (bench/sdcpp-constraints.txt holds the commands).

What it does: load the single file that ``ssdxl convert`` writes (the original SGM layout, which
stable-diffusion.cpp reads; it recognises SSD-1B's and Vega's UNets by their keys) with
``StableDiffusion(model_path=..., n_threads=..., wtype=...)``, then one warm-up image of
min(2, steps) steps and ``--repeats`` timed ones, with the same prompt, size, steps, guidance and
sampler (Euler on the discrete schedule) as the other paths. Its noise comes from its own
generator, so its image is not comparable pixel for pixel.

Per-stage times are stable-diffusion.cpp's own log lines ("get_learned_condition completed,
taking", "decode_first_stage completed, taking"); per-step wall and CPU times are taken at its
progress callback. Output JSON: {"versions", "config", "setup_s", "runs": [{"text", "steps",
"cpu_steps", "decode", "total", "cpu_total"}], "peak_rss_bytes", "inference_peak_rss_bytes"}.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import re
import sys
import time
from pathlib import Path

if __package__:  # imported as ssdxl.speed.*, by the tests
    from ssdxl.speed.baseline_process import fail, timed_runs
else:  # run as a script in the baseline's own environment, without ssdxl: the file beside this one
    from baseline_process import fail, timed_runs

STAGE = re.compile(r"(get_learned_condition|decode_first_stage) completed, taking ([0-9.]+)s")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="single .safetensors file in the original SGM layout")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="a lighthouse on a cliff at dusk, oil painting")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wtype", default="f16", help="weight type stable-diffusion.cpp converts to: f32, f16, q8_0, ...")
    p.add_argument("--flash-attn", action="store_true", help="its flash attention in the diffusion model")
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--image", required=True, help="PNG path for the first timed run's image")
    args = p.parse_args(argv)
    if not Path(args.model).is_file():
        fail(f"model file not found: {args.model}")
    for name in ("width", "height"):
        if getattr(args, name) <= 0 or getattr(args, name) % 8:
            fail(f"--{name} must be a positive multiple of 8")
    if args.steps < 1 or args.repeats < 1 or args.threads < 1:
        fail("--steps, --repeats and --threads must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import stable_diffusion_cpp as sd_cpp
    from stable_diffusion_cpp import StableDiffusion

    stages: dict[str, float] = {}

    @sd_cpp.sd_log_callback
    def on_log(_level: int, text: bytes, _data: ctypes.c_void_p) -> None:
        match = STAGE.search(text.decode("utf-8", errors="replace"))
        if match:
            stages[match.group(1)] = float(match.group(2))

    start = time.perf_counter()
    model = StableDiffusion(
        model_path=args.model,
        n_threads=args.threads,
        wtype=args.wtype,
        vae_decode_only=True,
        diffusion_flash_attn=args.flash_attn,
        verbose=True,
    )
    sd_cpp.sd_set_log_callback(on_log, ctypes.c_void_p(0))  # after the constructor, which installs its own
    setup_s = time.perf_counter() - start

    def run(steps: int) -> tuple[dict, object]:
        stages.clear()
        marks: list[tuple[int, float, float]] = []

        def on_step(step: int, _steps: int, _time: float) -> None:
            marks.append((step, time.perf_counter(), time.process_time()))

        w0, c0 = time.perf_counter(), time.process_time()
        images = model.generate_image(
            prompt=args.prompt,
            width=args.width,
            height=args.height,
            cfg_scale=args.guidance,
            sample_method="euler",
            scheduler="discrete",
            sample_steps=steps,
            seed=args.seed,
            progress_callback=on_step,
        )
        w1, c1 = time.perf_counter(), time.process_time()
        marks = [m for i, m in enumerate(marks) if i == 0 or m[0] != marks[i - 1][0]]  # one mark per step
        record = {
            "text": stages.get("get_learned_condition"),
            "steps": [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)],
            "cpu_steps": [b[2] - a[2] for a, b in zip(marks, marks[1:], strict=False)],
            "decode": stages.get("decode_first_stage"),
            "total": w1 - w0,
            "cpu_total": c1 - c0,
        }
        return record, images[0]

    measured = timed_runs(run, args.steps, args.repeats, args.image)
    result = {
        "versions": {
            "stable-diffusion-cpp-python": importlib.metadata.version("stable-diffusion-cpp-python"),
            "stable-diffusion.cpp": sd_cpp.sd_commit().decode(),
        },
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "image")},
        "setup_s": setup_s,
        **measured,
        "system_info": " ".join(sd_cpp.sd_get_system_info().decode().split()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
