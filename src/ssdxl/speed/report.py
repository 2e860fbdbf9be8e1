"""A benchmark result (``bench.run_benchmark``'s JSON) as markdown: the machine line and one row per
path with its stages, its distance from the FLOP floor and its speed-up over each baseline."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

BASELINES = ("diffusers-fp32", "diffusers-bf16", "optimum-intel", "sdcpp", "ssdxl-openvino")  # sdcpp: its best
GIB = 2**30


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    rates = result["matmul_flops_per_s"]
    load = result["load_average"]
    return (
        f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, "
        f"flags: {' '.join(m['speed_flags']) or 'none'}; matmul bf16 {rates['bf16']['wall'] / 1e12:.3f} / "
        f"fp32 {rates['fp32']['wall'] / 1e12:.3f} TFLOP/s (wall, all threads), bf16 "
        f"{rates['bf16']['cpu_1_thread'] / 1e12:.3f} TFLOP per CPU-second; load average "
        f"{_load(load['start'])} at start, {_load(load['end'])} at end"
    )


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    model = result["model"]
    floor = model["unet_flops_per_step"] / result["matmul_flops_per_s"]["bf16"]["wall"]
    paths = {p["name"]: p for p in result["paths"]}
    if (sdcpp := fastest_sdcpp(result["paths"])) is not None:
        paths["sdcpp"] = sdcpp
    baselines = [b for b in BASELINES if (paths.get(b) or {}).get("stats")]  # columns for the baselines measured
    lines = [
        f"**{model['name']}**, {s['width']}x{s['height']}, {s['steps']} steps, guidance {s['guidance']}, "
        f"{s['repeats']} timed runs after a warm-up. UNet {model['unet_parameters'] / 1e9:.2f} B parameters, "
        f"{model['unet_flops_per_step'] / 1e12:.2f} TFLOP per step; floor {floor:.2f} s/step at the bf16 rate.",
        "",
        f"Machine: {machine_line(result)}.",
        "",
        "| path | text s | s/step median (min-max) | CPU s/step | x floor | decode s | total s | "
        + "".join(f"x vs {b}" + (" (best)" if b == "sdcpp" else "") + " | " for b in baselines)
        + "peak RSS GiB | PSNR vs fp32 dB |",
        "|---" * (9 + len(baselines)) + "|",
    ]
    for p in result["paths"]:
        if not p["available"]:
            lines.append(f"| {p['name']} | unavailable: {p['reason']} |" + " |" * (7 + len(baselines)))
            continue
        st = p["stats"]
        step = st["step"]
        ratios = [_ratio(paths[b], p) for b in baselines]
        lines.append(
            f"| {p['name']} | {st['text']['median']:.2f} | {step['median']:.2f} ({step['min']:.2f}-{step['max']:.2f})"
            f" | {_num(st['cpu_step'].get('median'))} | {p['x_floor']:.2f} | {st['decode']['median']:.2f}"
            f" | {st['total']['median']:.2f} | "
            + "".join(f"{r} | " for r in ratios)
            + f"{p['peak_rss_bytes'] / GIB:.1f}"
            f" | {_num(p['psnr_vs_fp32_db'], 1)} |"
        )
    lines += ["", "Paths: " + "; ".join(f"`{p['name']}`: {p['description']}" for p in result["paths"]) + "."]
    return "\n".join(lines) + "\n"


def fastest_sdcpp(paths: list[dict[str, Any]]) -> dict[str, Any] | None:
    """stable-diffusion.cpp's fastest measured weight type (``sdcpp-*`` path): the baseline it is compared as."""
    measured = [p for p in paths if p["name"].startswith("sdcpp") and p.get("stats")]
    return min(measured, key=lambda p: p["stats"]["total"]["median"], default=None)


def _ratio(baseline: dict[str, Any] | None, path: dict[str, Any]) -> str:
    """Baseline's median total time over this path's: > 1 means this path is faster."""
    if not baseline or not baseline.get("stats"):
        return "-"
    return f"{baseline['stats']['total']['median'] / path['stats']['total']['median']:.2f}"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return "identical" if value == float("inf") else f"{value:.{digits}f}"


def _load(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def replace_block(doc: Path, name: str, body: str, *, append: str | None = None) -> None:
    """Put ``body`` between ``doc``'s ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers: how the scripts
    that measure (``bench/``, ``scripts/*_proof.py``) keep their tables in the docs. A doc without the
    markers gets them appended, after the ``append`` text (a heading and intro) if any; with ``append`` None
    that is an error."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text()
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    elif append is not None:
        text = text.rstrip("\n") + (f"\n\n{append}" if append else "") + f"\n\n{block}\n"
    else:
        raise SystemExit(f"{doc} has no {start} block")
    doc.write_text(text)
    print(f"wrote {doc} ({name})")


def measured_note(what: str) -> str:
    """The italic line under a proof table: when, on what machine, at what load, over what."""
    import datetime
    import os

    import torch

    from ssdxl.speed.machine import cpu_model

    machine = f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), float32"
    return f"\n\n*Measured {datetime.date.today()} on {machine}, load average {os.getloadavg()[0]:.2f}; {what}.*"
