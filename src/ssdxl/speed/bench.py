"""The benchmark harness behind ``ssdxl bench``: ssdxl's paths against plain diffusers, same weights,
same run.

Every path makes the same image (prompt, seed, size, steps, guidance) from the same component
objects: plain diffusers ``StableDiffusionXLPipeline`` built from them (float32, its CPU default,
then cast to bfloat16), the ssdxl engine on eager PyTorch, on OpenVINO, and with the training-free
accelerations. Paths run one after another because they change the shared modules in place
(float32 -> bfloat16 -> channels-last), so memory holds one copy of the weights. Each path gets a
warm-up run (2 steps: one-time allocations and OpenVINO compilation), then ``repeats`` timed runs:
per-stage wall and CPU time, peak memory, and the image's PSNR against float32 diffusers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ssdxl.models.components import Components
from ssdxl.sampling.precision import pick_dtype
from ssdxl.speed import machine, openvino_backend, threads
from ssdxl.speed.baseline_process import release_memory
from ssdxl.speed.flops import unet_flops
from ssdxl.speed.runtime import Runtime
from ssdxl.speed.timing import Mark, PeakMemory, summary

PATHS: dict[str, str] = {
    "diffusers-fp32": "diffusers StableDiffusionXLPipeline, float32 (its CPU default)",
    "optimum-intel": "optimum-intel OVStableDiffusionXLPipeline: its export, static reshape and default precision "
    "(own environment: bench/optimum-constraints.txt)",
    "diffusers-bf16": "diffusers StableDiffusionXLPipeline after pipe.to(torch.bfloat16)",
    "ssdxl": "ssdxl engine, eager PyTorch fast path (bfloat16 where the CPU has it, channels-last)",
    "ssdxl-openvino": "ssdxl engine, OpenVINO backend: static shapes, bf16 hint (optimum-intel's recipe)",
    "ssdxl-openvino-int8": "as ssdxl-openvino, the UNet quantized to INT8 by NNCF (activations and weights, "
    "calibrated on the model's own sampling)",
    "ssdxl-openvino-int8-hybrid": "as ssdxl-openvino-int8, convolutions quantized fully and the other weights only "
    "(optimum-intel's hybrid mode)",
    "ssdxl-openvino-int8-weights": "as ssdxl-openvino, UNet and decoder weights compressed to INT8 by NNCF",
    "ssdxl+deepcache": "ssdxl engine, DeepCache (full UNet every cache_interval steps)",
    "ssdxl-openvino+cfg-cutoff": "ssdxl OpenVINO backend, guidance only for the first guidance_cutoff of the steps",
    # last: they need the weights only as a file, and this process lets go of its own copy for them
    "sdcpp-f16": "stable-diffusion.cpp through stable-diffusion-cpp-python built from source for this CPU "
    "(own environment: bench/sdcpp-constraints.txt): the single file ssdxl convert writes, f16 weights, "
    "Euler on the discrete schedule, its own noise",
    "sdcpp-q8_0": "as sdcpp-f16, weights quantized to q8_0 by stable-diffusion.cpp when it loads them",
}
DEFAULT_PATHS = ("diffusers-fp32", "diffusers-bf16", "ssdxl", "ssdxl-openvino", "ssdxl+deepcache")
REFERENCE = "diffusers-fp32"
OWN_NOISE = {p for p in PATHS if p.startswith("sdcpp")}  # their images start from other noise: no PSNR
OPENVINO_PATHS = {p for p in PATHS if "openvino" in p}


@dataclass
class Settings:
    width: int = 512
    height: int = 512
    steps: int = 4
    guidance: float = 7.0
    repeats: int = 2
    seed: int = 0
    prompt: str = "a lighthouse on a cliff at dusk, oil painting"
    cache_interval: int = 3
    guidance_cutoff: float = 0.5
    optimum_python: str | None = None  # interpreter of an environment with optimum-intel (its own stack)
    calibration: int = 4  # prompts the INT8 paths calibrate on (10 steps each, at the benchmark's size)
    sdcpp_python: str | None = None  # interpreter of an environment with stable-diffusion-cpp-python


@dataclass
class Run:
    """One timed image: seconds per stage (wall), per-step wall and CPU seconds, the picture."""

    text: float
    steps: list[float]
    cpu_steps: list[float]
    decode: float
    total: float
    cpu_total: float
    image: Image.Image

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "image"}


@dataclass
class PathResult:
    name: str
    description: str
    available: bool = True
    reason: str | None = None
    setup_s: float = 0.0  # conversion / compilation before the warm-up
    runs: list[Run] = field(default_factory=list)
    peak_rss: int = 0
    working_set: int = 0  # peak minus resident memory before the path ran
    psnr: float | None = None

    def stats(self) -> dict[str, dict[str, float]]:
        runs = self.runs
        return {
            "text": summary([r.text for r in runs]),
            "step": summary([s for r in runs for s in r.steps]),
            "cpu_step": summary([s for r in runs for s in r.cpu_steps]),
            "decode": summary([r.decode for r in runs]),
            "total": summary([r.total for r in runs]),
            "cpu_total": summary([r.cpu_total for r in runs]),
        }


def run_benchmark(
    components: Components, settings: Settings, paths: list[str], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Time ``paths`` (in PATHS order) on ``components`` (float32, changed in place; left on the meta device by the
    sdcpp paths); JSON-ready result."""
    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"unknown paths {sorted(unknown)}; known: {', '.join(PATHS)}")
    threads.pin(torch.get_num_threads())  # every path on one count: ssdxl's own choice would give small models one
    load_start = os.getloadavg()
    info = machine.describe()
    log(f"machine: {info['cpu']}, {info['cores']} cores, {' '.join(info['speed_flags'])}")
    rates = {
        name: {"wall": machine.matmul_rate(dtype), "cpu_1_thread": machine.single_thread_cpu_rate(dtype)}
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))
    }
    guided = settings.guidance > 1.0
    flops = unet_flops(
        dict(components.unet.config),
        settings.height,
        settings.width,
        batch=2 if guided else 1,
        time_ids=components.family.time_ids,
        vae_scale=components.vae_scale,
    )
    results = _time_paths(components, settings, paths, log)
    reference = next((r for r in results if r.name == REFERENCE and r.runs), None)
    for result in results:
        if reference is not None and result.runs and result.name not in OWN_NOISE:
            result.psnr = psnr(reference.runs[0].image, result.runs[0].image)
    return {
        "machine": info,
        "matmul_flops_per_s": rates,
        "model": {
            "name": components.name,
            "unet_parameters": sum(p.numel() for p in components.unet.parameters()),
            "unet_flops_per_step": flops,
        },
        "settings": dataclasses.asdict(settings),
        "paths": [_path_record(r, flops, rates) for r in results],
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
    }


def _time_paths(
    components: Components, settings: Settings, paths: list[str], log: Callable[[str], None]
) -> list[PathResult]:
    """Each path in turn: its setup, a warm-up, the timed runs. Exports and weight files (gigabytes at full size)
    live in a scratch folder that goes with the benchmark."""
    results: list[PathResult] = []
    with tempfile.TemporaryDirectory(prefix="ssdxl-bench-") as scratch:
        runners = _runners(components, settings, Path(scratch))
        for name in [p for p in PATHS if p in paths]:
            result = PathResult(name, PATHS[name])
            log(f"{name}: {result.description}")
            run_once = None  # the last path's engine and compiled models go before this one sets up its own
            release_memory()
            try:
                run_once = runners[name](result)
            except _Unavailable as exc:
                result.available, result.reason = False, str(exc)
                log(f"  unavailable: {exc}")
                results.append(result)
                continue
            if isinstance(run_once, list):  # measured in its own process, warm-up and memory included
                result.runs = run_once
                for i, run in enumerate(run_once):
                    log(f"  run {i + 1}: {run.total:.2f} s (setup {result.setup_s:.0f} s)")
                results.append(result)
                continue
            with PeakMemory() as memory:
                run_once(dataclasses.replace(settings, steps=min(2, settings.steps)))  # warm-up
                for i in range(settings.repeats):
                    result.runs.append(run_once(settings))
                    log(f"  run {i + 1}: {result.runs[-1].total:.2f} s, load {os.getloadavg()[0]:.2f}")
            result.peak_rss, result.working_set = memory.peak, memory.peak - memory.start
            results.append(result)
    return results


def _path_record(result: PathResult, flops: int, rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    record = {
        "name": result.name,
        "description": result.description,
        "available": result.available,
        "reason": result.reason,
        "setup_s": result.setup_s,
        "runs": [r.record() for r in result.runs],
        "stats": result.stats() if result.runs else {},
        "peak_rss_bytes": result.peak_rss,
        "working_set_bytes": result.working_set,
        "psnr_vs_fp32_db": result.psnr,
    }
    if result.runs:
        stats = record["stats"]
        record["x_floor"] = stats["step"]["median"] / (flops / rates["bf16"]["wall"])
        if stats["cpu_step"]:
            record["x_floor_cpu"] = stats["cpu_step"]["median"] / (flops / rates["bf16"]["cpu_1_thread"])
    return record


def psnr(reference: Image.Image, image: Image.Image) -> float:
    """Peak signal-to-noise ratio of 8-bit RGB images in dB (inf when identical)."""
    a = np.asarray(reference.convert("RGB"), dtype=np.float64)
    b = np.asarray(image.convert("RGB"), dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _baseline_python(given: str | None, name: str, package: str) -> str:
    """The interpreter of a baseline's own environment: ``--{name}-python``, else ``$SSDXL_{NAME}_PYTHON``."""
    python = given or os.environ.get(f"SSDXL_{name.upper()}_PYTHON")
    if not python or not Path(python).is_file():
        raise _Unavailable(
            f"needs a Python environment with {package} (see bench/{name}-constraints.txt); "
            f"pass --{name}-python or set SSDXL_{name.upper()}_PYTHON"
        )
    return python


class _Unavailable(Exception):
    """A path that cannot run here (missing optional package); reported, not fatal."""


# ---------------------------------------------------------------------- paths


def _runners(components: Components, settings: Settings, scratch: Path) -> dict[str, Callable[[PathResult], Callable]]:
    """Per path: a setup (given its result, to record setup time) returning a run function."""
    engine_dtype = pick_dtype("auto", torch.device("cpu"))
    exports: dict[str | None, Path] = {}  # INT8 mode -> folder: OpenVINO paths share one conversion
    recorded: list[list] = []  # the calibration data, recorded once for the INT8 modes that need it

    def exported(int8: str | None) -> Path:
        if int8 not in exports:
            exports[int8] = scratch / f"openvino-{int8 or 'bf16'}"
            if int8 in ("full", "hybrid") and not recorded:
                recorded.extend(_calibration(components, engine_dtype, settings))
            samples = recorded if int8 in ("full", "hybrid") else None
            openvino_backend.export(components, exports[int8], int8=int8, calibration=samples, replace=True)
        return exports[int8]

    def diffusers(dtype: torch.dtype):
        def setup(_result: PathResult):
            components.to("cpu", dtype)
            return lambda s: _run_diffusers(components.diffusers_pipeline(), s)

        return setup

    def engine(backend: str, int8: str | None = None, **request: Any):
        def setup(result: PathResult):
            if backend == "openvino" and not openvino_backend.available():
                raise _Unavailable("openvino is not installed (pip install openvino)")
            components.to("cpu", engine_dtype)
            runtime = Runtime.prepare([(components, "")], torch.device("cpu"), backend="torch")
            if backend == "openvino":
                start = time.perf_counter()
                runtime = Runtime("openvino")
                runtime.add_openvino(components, exported(int8))
                result.setup_s = time.perf_counter() - start
            built = _engine(components, engine_dtype, runtime)
            return lambda s: _run_engine(built, s, **request)

        return setup

    def optimum(result: PathResult) -> list[Run]:
        python = _baseline_python(settings.optimum_python, "optimum", "optimum-intel")
        components.to("cpu", torch.float32)  # what the export reads: the weights every path starts from
        return _run_optimum(python, components, settings, result)

    def single_file() -> Path:
        """The weights as ``ssdxl convert`` writes them (float16), once for the stable-diffusion.cpp paths."""
        from ssdxl.models.convert import save_single_file

        path = scratch / "model.safetensors"
        return path if path.exists() else save_single_file(components, path, torch.float16)

    def sdcpp(wtype: str):
        def setup(result: PathResult) -> list[Run]:
            python = _baseline_python(settings.sdcpp_python, "sdcpp", "stable-diffusion-cpp-python")
            model = single_file()
            # Nothing after these paths needs the weights but as that file: this process lets them go, as a
            # full-size SDXL in both processes would not fit in 24 GB.
            components.to("meta", torch.float16)
            release_memory()
            return _run_sdcpp(python, model, wtype, settings, result)

        return setup

    return {
        "diffusers-fp32": diffusers(torch.float32),
        "optimum-intel": optimum,
        "diffusers-bf16": diffusers(torch.bfloat16),
        "ssdxl": engine("torch"),
        "ssdxl-openvino": engine("openvino"),
        "ssdxl-openvino-int8": engine("openvino", int8="full"),
        "ssdxl-openvino-int8-hybrid": engine("openvino", int8="hybrid"),
        "ssdxl-openvino-int8-weights": engine("openvino", int8="weights"),
        "ssdxl+deepcache": engine("torch", cache_interval=settings.cache_interval),
        "ssdxl-openvino+cfg-cutoff": engine("openvino", guidance_cutoff=settings.guidance_cutoff),
        "sdcpp-f16": sdcpp("f16"),
        "sdcpp-q8_0": sdcpp("q8_0"),
    }


def _run_diffusers(pipe, s: Settings) -> Run:
    marks: dict[str, Mark] = {}
    steps: list[Mark] = []
    encode, decode = pipe.encode_prompt, pipe.vae.decode

    def timed_encode(*args, **kwargs):
        out = encode(*args, **kwargs)
        marks["encoded"] = Mark.now()
        return out

    def timed_decode(*args, **kwargs):
        marks["decode"] = Mark.now()
        return decode(*args, **kwargs)

    def on_step(_pipe, _i, _t, kwargs):
        steps.append(Mark.now())
        return kwargs

    pipe.encode_prompt, pipe.vae.decode = timed_encode, timed_decode
    try:
        start = Mark.now()
        image = pipe(
            s.prompt,
            width=s.width,
            height=s.height,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance,
            generator=torch.Generator("cpu").manual_seed(s.seed),
            callback_on_step_end=on_step,
        ).images[0]
        end = Mark.now()
    finally:
        del pipe.encode_prompt, pipe.vae.decode
    between = _intervals([marks["encoded"], *steps])
    return Run(
        text=marks["encoded"].since(start).wall,
        steps=[m.wall for m in between],
        cpu_steps=[m.cpu for m in between],
        decode=end.since(marks["decode"]).wall,
        total=end.since(start).wall,
        cpu_total=end.since(start).cpu,
        image=image,
    )


def _calibration(components: Components, dtype: torch.dtype, s: Settings) -> list:
    """The UNet's inputs while the model samples ``s.calibration`` prompts at the benchmark's size (eager PyTorch)."""
    from ssdxl.speed import calibration

    components.to("cpu", dtype)
    runtime = Runtime.prepare([(components, "")], torch.device("cpu"), backend="torch")
    prompts = calibration.PROMPTS[: s.calibration]
    return calibration.record_unet_inputs(_engine(components, dtype, runtime), prompts, width=s.width, height=s.height)


def _engine(components: Components, dtype: torch.dtype, runtime: Runtime):
    from ssdxl.sampling.engine import Engine, LoadedModel

    for module in components.modules().values():
        module.eval().requires_grad_(False)
    return Engine(LoadedModel(components, components.name, ""), None, torch.device("cpu"), dtype, runtime)


def _run_engine(engine, s: Settings, **request: Any) -> Run:
    from ssdxl.sampling.request import GenerationRequest

    steps: list[Mark] = []
    r = GenerationRequest(
        s.prompt, width=s.width, height=s.height, steps=s.steps, guidance_scale=s.guidance, seed=s.seed, **request
    )
    start = Mark.now()
    result = engine.generate(r, callback=lambda *_: steps.append(Mark.now()))
    end = Mark.now()
    t = result.timings
    between = _intervals(steps)
    first = t["denoise"] - sum(m.wall for m in between)
    return Run(
        text=t["text_encode"],
        steps=[first] + [m.wall for m in between],
        cpu_steps=[m.cpu for m in between],
        decode=t["decode"],
        total=end.since(start).wall,
        cpu_total=end.since(start).cpu,
        image=result.images[0].image,
    )


def _run_optimum(python: str, components: Components, s: Settings, result: PathResult) -> list[Run]:
    """optimum-intel in its own interpreter (it needs an older transformers than ssdxl): the same
    weights saved as a diffusers folder."""
    with tempfile.TemporaryDirectory(prefix="ssdxl-bench-optimum-") as tmp:
        components.save(Path(tmp) / "model")
        return _run_external(python, "optimum_intel_run.py", "optimum-intel", ["--model", f"{tmp}/model"], s, result)


def _run_sdcpp(python: str, model: Path, wtype: str, s: Settings, result: PathResult) -> list[Run]:
    """stable-diffusion.cpp in its own interpreter: the same weights as one single file, the sampler the
    same (Euler, discrete schedule), weights converted to ``wtype`` as it loads them."""
    args = ["--model", str(model), "--wtype", wtype]
    return _run_external(python, "sdcpp_run.py", "stable-diffusion-cpp-python", args, s, result)


def _run_external(
    python: str, script: str, package: str, args: list[str], s: Settings, result: PathResult
) -> list[Run]:
    """Another environment's benchmark script (this folder's ``script``, run by ``python``): the same prompt,
    seed, size, steps, guidance and threads, its own warm-up, timed runs, per-stage times and peak memory."""
    with tempfile.TemporaryDirectory(prefix="ssdxl-bench-external-") as tmp:
        out, image = Path(tmp) / "result.json", Path(tmp) / "image.png"
        command = [python, str(Path(__file__).with_name(script)), *args, "--out", str(out), "--image", str(image)]
        command += ["--width", str(s.width), "--height", str(s.height), "--steps", str(s.steps)]
        command += ["--guidance", str(s.guidance), "--seed", str(s.seed), "--prompt", s.prompt]
        command += ["--repeats", str(s.repeats), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode < 0:  # the kernel's out-of-memory killer is the usual one
            raise _Unavailable(f"{package} run was killed by signal {-done.returncode} (out of memory?)")
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
            raise _Unavailable(f"{package} run failed: {lines[-1]}")
        data = json.loads(out.read_text())
        picture = Image.open(image).convert("RGB")
    result.setup_s = data["setup_s"]
    result.peak_rss = data["peak_rss_bytes"]
    result.working_set = data.get("inference_peak_rss_bytes") or 0
    result.description += f"; {package} {data['versions'].get(package)}"
    return [Run(image=picture, **{k: run[k] for k in ("text", "steps", "cpu_steps", "decode", "total", "cpu_total")})
            for run in data["runs"]]  # fmt: skip


def _intervals(marks: list[Mark]) -> list[Mark]:
    return [b.since(a) for a, b in itertools.pairwise(marks)]
