"""Training speed of every fine-tuning mode on the built-in ``shapes`` model (64², batch 8), float32 against
bf16 autocast, one after another in one process:

    python bench/finetune.py        # a few minutes on 2 cores; writes bench/results/finetune.json and the
                                    # "Fine-tuning" section of docs/performance.md

Each run is the real loop (``ssdxl.finetune.finetune``) on the shapes world; the figure is seconds per
optimiser step over the last ``TIMED`` steps (the loop's own log), after ``WARMUP`` steps, with the
machine's load average beside it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ssdxl.paths import scratch_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "finetune.json"
DOC = ROOT / "docs" / "performance.md"
WARMUP, TIMED, BATCH = 6, 18, 8
MODES = {  # label -> FinetuneConfig settings
    "LoRA rank 16, UNet": {"mode": "lora"},
    "LoRA rank 16, UNet + text encoders": {"mode": "lora", "train_text_encoder": True},
    "embedding (2 vectors)": {"mode": "embedding", "vectors": 2},
    "full UNet": {"mode": "full", "ema_decay": 0.0},
    "LCM-LoRA distillation": {"mode": "lcm"},
}


def seconds_per_step(settings: dict, precision: str, folder: Path) -> float:
    from ssdxl.distill.lcm import distill_lcm
    from ssdxl.finetune import FinetuneConfig, finetune

    name = re.sub(r"\W+", "-", f"{settings['mode']}-{len(os.listdir(folder))}")
    out = folder / (name if settings["mode"] == "full" else f"{name}.safetensors")
    cfg = FinetuneConfig(model="shapes", out=str(out), data="shapes", steps=WARMUP + TIMED, batch_size=BATCH,
                         log_every=TIMED, checkpoint_every=WARMUP + TIMED, mixed_precision=precision,
                         **{"token": "benchword"} if settings["mode"] == "embedding" else {},
                         **settings)  # fmt: skip
    (distill_lcm if settings["mode"] == "lcm" else finetune)(cfg)
    logged = [json.loads(line) for line in (cfg.run_dir / "log.jsonl").read_text().splitlines()]
    return [entry["s_per_step"] for entry in logged if "s_per_step" in entry][-1]


def main() -> None:
    from ssdxl.sampling.precision import cpu_has_fast_bf16
    from ssdxl.speed.machine import cpu_model

    folder = scratch_dir("ssdxl-bench-finetune-")
    precisions = ["no", "bf16"] if cpu_has_fast_bf16() else ["no"]
    rows = []
    for label, settings in MODES.items():
        timings = {p: seconds_per_step(settings, p, folder) for p in precisions}
        rows.append({"mode": label, **{f"s_per_step_{p}": round(t, 4) for p, t in timings.items()}})
        print(rows[-1], flush=True)
    result = {"machine": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
              "load_average": round(os.getloadavg()[0], 2), "batch": BATCH, "rows": rows}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_doc(result, precisions)


def write_doc(result: dict, precisions: list[str]) -> None:
    head = ["mode", *(f"s / step ({'float32' if p == 'no' else 'bf16 autocast'})" for p in precisions)]
    if len(precisions) == 2:
        head.append("bf16 speed-up")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["mode"], *(f"{row[f's_per_step_{p}']:.3f}" for p in precisions)]
        if len(precisions) == 2:
            cells.append(f"{row['s_per_step_no'] / row['s_per_step_bf16']:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\n*{result['machine']}, {result['cores']} cores, {result['threads']} torch threads, batch "
        f"{result['batch']} at 64², load average {result['load_average']}; `python bench/finetune.py`.*"
    )
    from ssdxl.speed.report import replace_block

    intro = "## Fine-tuning\n\nSeconds per optimiser step of each fine-tuning mode on the built-in model."
    replace_block(DOC, "finetune", "\n".join(lines), append=intro)


if __name__ == "__main__":
    main()
