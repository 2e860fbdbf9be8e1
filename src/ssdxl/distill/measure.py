"""What a student costs and keeps, measured: UNet step time next to its teacher's, and output gap."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from ssdxl.distill.inputs import UNetInputs
from ssdxl.models.families import time_ids_of, unet_inputs


@torch.no_grad()
def output_gap(student: UNet2DConditionModel, teacher: UNet2DConditionModel, inputs: list[UNetInputs]) -> float:
    """Mean squared difference of the two noise predictions on fixed inputs (0 = the teacher's output)."""
    gaps = [
        F.mse_loss(student(**x.kwargs()).sample.float(), teacher(**x.kwargs()).sample.float()).item() for x in inputs
    ]
    return sum(gaps) / len(gaps)


def timing_inputs(
    config: dict[str, Any], width: int, height: int, vae_scale: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """One guided sampling step's UNet input (batch 2: unconditional + conditional) with random values."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(device, dtype)

    inputs = unet_inputs(config, time_ids_of(config), 2, height // vae_scale, width // vae_scale, rand)
    return {**inputs, "timestep": torch.tensor(500, device=device)}


@torch.no_grad()
def seconds_per_step(unets: dict[str, UNet2DConditionModel], inputs: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds per UNet call for each model, timed round-robin so that load from other
    processes on a shared machine falls on every model alike; one untimed warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in unets}
    for rep in range(repeats + 1):
        for name, unet in unets.items():
            _sync(inputs["sample"].device)
            start = time.perf_counter()
            unet(**inputs)
            _sync(inputs["sample"].device)
            if rep:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
