#!/usr/bin/env python
"""Benchmark optimum-intel's OVStableDiffusionXLPipeline as a baseline.

Standalone: it does not import ssdxl and runs inside the separate optimum venv
(/work/optimum-venv, see bench/optimum-constraints.txt), because optimum-intel
needs transformers<5.6 and huggingface-hub<1.22.

What it does, following optimum-intel's documented path:
  pipe = OVStableDiffusionXLPipeline.from_pretrained(DIR, export=True, compile=False)
  pipe.reshape(batch_size=1, height=H, width=W, num_images_per_prompt=1)
  pipe.compile()
on device CPU with OpenVINO's default inference precision (no
INFERENCE_PRECISION_HINT is set; the one the CPU plugin picked is recorded).
One warm-up call of min(2, steps) steps, then --repeats timed calls.

Notes:
* optimum-intel's static reshape gives the UNet a batch of 2 (classifier-free
  guidance), so --guidance must be > 1.
* By default (--load-in-8bit auto) optimum's export compresses the weights of
  every submodel with >= 1e9 parameters to int8_asym (that is the SDXL and SSD-1B
  UNets, not Vega's); --load-in-8bit off keeps them in float, on forces int8.
  The weight element types found in the exported UNet are recorded.
* Initial latents are torch.randn((1, C, H/8, W/8), generator=
  torch.Generator("cpu").manual_seed(seed), dtype=float32), passed as `latents=`
  (the pipeline multiplies them by scheduler.init_noise_sigma itself); the same,
  now advanced, generator is passed as `generator=` for stochastic schedulers,
  which is exactly what diffusers does when it draws the latents itself.
* Decode time wraps pipe.vae.decode (OVModelVae.decode -> the OpenVINO VAE
  decoder request); image post-processing is counted in "total" only.
* Folders written by transformers >= 5.6 (e.g. by this project's stack) store
  CLIPTextModel weights without the "text_model." key prefix, a layout that the
  transformers 5.5 in this venv cannot read: it would silently random-initialise
  text_encoder. Such folders are staged in a temporary folder (symlinks, plus a
  prefixed copy of those safetensors files) before the export; the names are
  recorded under "staged". Hub-format folders are exported as they are.
* peak_rss_bytes is the process's VmHWM up to the timed runs, so it includes the export
  (the PyTorch weights are loaded in this process). inference_peak_rss_bytes is
  the peak over the timed runs, from VmHWM after resetting it (Linux
  clear_refs) once setup and the warm-up are done, or null.

Output JSON:
  {"versions": {...}, "config": {...}, "openvino": {...}, "setup_s": ...,
   "setup": {"export_s", "reshape_s", "compile_s"},
   "staged": [...], "runs": [{"text", "steps": [...], "cpu_steps": [...], "decode", "total",
             "cpu_total"}],
   "peak_rss_bytes": ..., "inference_peak_rss_bytes": ...}
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__:  # imported as ssdxl.speed.*, by the tests
    from ssdxl.speed.baseline_process import fail, timed_runs
else:  # run as a script in the baseline's own environment, without ssdxl: the file beside this one
    from baseline_process import fail, timed_runs


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="diffusers SDXL-family folder (model_index.json)")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0, help="must be > 1 (static CFG batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--repeats", type=int, default=1, help="timed runs after one warm-up run")
    p.add_argument("--out", required=True, help="JSON results path")
    p.add_argument("--image", required=True, help="PNG path for the first timed run's image")
    p.add_argument("--threads", type=int, default=None, help="OpenVINO INFERENCE_NUM_THREADS (and torch threads)")
    p.add_argument(
        "--inference-precision",
        choices=["f32", "bf16", "f16"],
        default=None,
        help="override OpenVINO's INFERENCE_PRECISION_HINT (default: the CPU plugin's own choice)",
    )
    p.add_argument(
        "--load-in-8bit",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto: optimum's default (int8 weights for submodels >= 1e9 params); on/off: force",
    )
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> Path:
    model = Path(args.model)
    if not model.is_dir():
        fail(f"model folder not found: {model}")
    if not (model / "model_index.json").is_file():
        fail(f"not a diffusers folder (no model_index.json): {model}")
    for name, value in (("width", args.width), ("height", args.height)):
        if value <= 0 or value % 8:
            fail(f"--{name} must be a positive multiple of 8, got {value}")
    if args.steps < 1:
        fail(f"--steps must be >= 1, got {args.steps}")
    if args.repeats < 1:
        fail(f"--repeats must be >= 1, got {args.repeats}")
    if not args.guidance > 1.0:
        fail(f"--guidance must be > 1 (optimum-intel's static reshape fixes the CFG batch of 2), got {args.guidance}")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    for flag, path in (("--out", args.out), ("--image", args.image)):
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            fail(f"{flag}: folder does not exist: {parent}")
    return model


def versions() -> dict:
    out = {}
    for dist in (
        "optimum-intel",
        "optimum",
        "openvino",
        "nncf",
        "transformers",
        "diffusers",
        "torch",
        "huggingface-hub",
    ):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def unprefixed_clip_text_encoders(model_dir: Path) -> list:
    """model_index entries of class CLIPTextModel whose safetensors lack the "text_model." prefix."""
    from safetensors import safe_open

    index = json.loads((model_dir / "model_index.json").read_text())
    names = []
    for name, spec in index.items():
        if not (isinstance(spec, list) and len(spec) == 2 and spec[1] == "CLIPTextModel"):
            continue
        files = sorted((model_dir / name).glob("*.safetensors"))
        if not files:
            continue
        with safe_open(str(files[0]), "pt") as f:
            keys = list(f.keys())
        if keys and not any(k.startswith("text_model.") for k in keys):
            names.append(name)
    return names


def stage_model(model_dir: Path, names: list, root: Path) -> Path:
    """Symlink model_dir into root, with text_model.-prefixed copies of the named folders' weights."""
    from safetensors.torch import load_file, save_file

    staged = root / model_dir.name
    staged.mkdir()
    for entry in model_dir.iterdir():
        if entry.name not in names:
            (staged / entry.name).symlink_to(entry.resolve())
            continue
        (staged / entry.name).mkdir()
        for f in entry.iterdir():
            target = staged / entry.name / f.name
            if f.name.endswith(".safetensors"):
                tensors = load_file(str(f))
                save_file({f"text_model.{k}": v for k, v in tensors.items()}, str(target), metadata={"format": "pt"})
                del tensors
            elif f.name.endswith(".safetensors.index.json"):
                index = json.loads(f.read_text())
                index["weight_map"] = {f"text_model.{k}": v for k, v in index.get("weight_map", {}).items()}
                target.write_text(json.dumps(index, indent=2))
            else:
                target.symlink_to(f.resolve())
    return staged


def weight_types(ov_model) -> dict:
    counts: dict = {}
    for op in ov_model.get_ops():
        if op.get_type_name() == "Constant":
            n = 1
            for d in op.get_output_shape(0):
                n *= d
            if n >= 1024:  # weights, not scalars
                key = op.get_element_type().get_type_name()
                counts[key] = counts.get(key, 0) + n
    return counts


def main(argv=None) -> int:
    args = parse_args(argv)
    model_dir = validate(args)

    import torch
    from optimum.intel import OVStableDiffusionXLPipeline

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ov_config = {}
    if args.threads is not None:
        ov_config["INFERENCE_NUM_THREADS"] = str(args.threads)
    if args.inference_precision is not None:
        ov_config["INFERENCE_PRECISION_HINT"] = args.inference_precision
    ov_config = ov_config or None
    load_in_8bit = {"auto": None, "on": True, "off": False}[args.load_in_8bit]

    # --- compatibility staging (not counted in setup_s) ---
    staged_names = unprefixed_clip_text_encoders(model_dir)
    stage_root = tempfile.TemporaryDirectory(prefix="optimum-stage-")
    source = stage_model(model_dir, staged_names, Path(stage_root.name)) if staged_names else model_dir
    if staged_names:
        print(f"staged {', '.join(staged_names)} with text_model.-prefixed weights", file=sys.stderr)

    # --- setup: export + reshape + compile ---
    t0 = time.perf_counter()
    pipe = OVStableDiffusionXLPipeline.from_pretrained(
        str(source), export=True, compile=False, device="CPU", ov_config=ov_config, load_in_8bit=load_in_8bit
    )
    t1 = time.perf_counter()
    pipe.reshape(batch_size=1, height=args.height, width=args.width, num_images_per_prompt=1)
    t2 = time.perf_counter()
    pipe.compile()
    t3 = time.perf_counter()
    setup = {"export_s": t1 - t0, "reshape_s": t2 - t1, "compile_s": t3 - t2}
    stage_root.cleanup()  # the export's IR lives in optimum's own temporary folder
    pipe.set_progress_bar_config(disable=True)

    ov_info = {"device": "CPU", "ov_config": ov_config or {}, "unet_weight_types": weight_types(pipe.unet.model)}
    for prop in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS"):
        try:
            value = pipe.unet.request.get_property(prop)
            ov_info[prop] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except Exception:  # property names differ between plugins/versions
            ov_info[prop] = None

    # --- instrumentation ---
    state: dict = {}

    orig_encode = pipe.encode_prompt

    def timed_encode_prompt(*a, **k):
        s = time.perf_counter()
        result = orig_encode(*a, **k)
        e = time.perf_counter()
        state["text"] = e - s
        state["marks"] = [(e, time.process_time())]
        return result

    pipe.encode_prompt = timed_encode_prompt

    orig_decode = pipe.vae.decode

    def timed_decode(*a, **k):
        s = time.perf_counter()
        result = orig_decode(*a, **k)
        state["decode"] = state.get("decode", 0.0) + time.perf_counter() - s
        return result

    pipe.vae.decode = timed_decode

    def on_step_end(_pipe, _i, _t, _kwargs):
        state["marks"].append((time.perf_counter(), time.process_time()))
        return {}

    channels = pipe.unet.config["in_channels"] if isinstance(pipe.unet.config, dict) else pipe.unet.config.in_channels
    shape = (1, channels, args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)

    def run(steps: int):
        state.clear()
        generator = torch.Generator("cpu").manual_seed(args.seed)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        w0, c0 = time.perf_counter(), time.process_time()
        out = pipe(
            prompt=args.prompt,
            height=args.height,
            width=args.width,
            num_inference_steps=steps,
            guidance_scale=args.guidance,
            latents=latents,
            generator=generator,
            callback_on_step_end=on_step_end,
        )
        w1, c1 = time.perf_counter(), time.process_time()
        marks = state["marks"]
        record = {
            "text": state["text"],
            "steps": [marks[i][0] - marks[i - 1][0] for i in range(1, len(marks))],
            "cpu_steps": [marks[i][1] - marks[i - 1][1] for i in range(1, len(marks))],
            "decode": state.get("decode"),
            "total": w1 - w0,
            "cpu_total": c1 - c0,
        }
        return record, out.images[0]

    measured = timed_runs(run, args.steps, args.repeats, args.image)

    result = {
        "versions": versions(),
        "config": {
            "model": str(model_dir.resolve()),
            "width": args.width,
            "height": args.height,
            "steps": args.steps,
            "guidance": args.guidance,
            "seed": args.seed,
            "prompt": args.prompt,
            "repeats": args.repeats,
            "threads": args.threads,
            "load_in_8bit": args.load_in_8bit,
            "inference_precision": args.inference_precision,
            "warmup_steps": min(2, args.steps),
        },
        "openvino": ov_info,
        "setup_s": t3 - t0,
        "setup": setup,
        "staged": staged_names,
        **measured,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
