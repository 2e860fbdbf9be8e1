"""Calibration data for INT8 post-training quantization: the UNet's own inputs, recorded while the model samples,
and the export that uses them (``export_model``: what ``ssdxl export openvino`` runs).

Activation ranges are what quantization must get right, and they depend on where a sample is in the schedule and
on the text it follows, so, as the OpenVINO notebooks do, the engine generates images for ``prompts`` and every
UNet call it makes (guided: batch 2, the cond and uncond halves together) is kept in the order the exported graph
takes its inputs. A built-in model of the shapes world is calibrated on its own captions; any other on a fixed set
of varied prompts (or the caller's).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ssdxl.data.shapes import caption, sample_scene
from ssdxl.models import builtin
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed import openvino_backend

STEPS = 10  # per prompt: the schedule's early, middle and late noise levels all appear
PROMPTS = (
    "a photo of a red fox in the snow, golden hour",
    "an oil painting of a lighthouse on a cliff at dusk",
    "a bowl of ramen on a wooden table, studio lighting",
    "a futuristic city skyline at night, neon, rain",
    "portrait of an old fisherman, black and white photograph",
    "a watercolor of cherry blossoms beside a river",
    "a cozy reading nook with a cat asleep on a blanket",
    "an astronaut riding a horse on the moon, digital art",
    "a macro photo of a dew drop on a green leaf",
    "a medieval castle on a hill under a stormy sky",
    "a minimalist poster of a mountain range, flat colors",
    "a plate of pancakes with berries and syrup",
    "a sailboat on a calm sea at sunrise, pastel colors",
    "a steampunk clockwork owl, intricate details",
    "a children's book illustration of a friendly dragon",
    "an aerial view of a desert canyon with a winding river",
)


def default_prompts(engine: Engine, count: int, seed: int = 0) -> list[str]:
    """``count`` calibration prompts for ``engine``'s model: captions of its world for a built-in one."""
    if builtin.resolve(engine.base.source) is not None:
        rng = np.random.default_rng(seed)
        return [caption(sample_scene(rng, two_objects=i % 2 == 1)) for i in range(count)]
    return [PROMPTS[i % len(PROMPTS)] for i in range(count)]


def record_unet_inputs(
    engine: Engine,
    prompts: Sequence[str],
    *,
    steps: int | None = STEPS,
    width: int | None = None,
    height: int | None = None,
    loras: Sequence[tuple[str, float]] = (),
) -> list[list[np.ndarray]]:
    """Every call of the base UNet while ``engine`` generates one image per prompt (eager PyTorch), as float32
    arrays in the exported graph's input order: sample, timesteps, text embeddings, then SDXL's pooled text and
    time ids. With ``loras`` on (and ``steps`` None: their defaults, 4 unguided steps for a few-step LoRA), the
    inputs the UNet sees in the runs a fused export will make."""
    calls: list[list[np.ndarray]] = []

    def keep(_module, args, kwargs):
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        added = kwargs.get("added_cond_kwargs") or {}
        timesteps = torch.as_tensor(timestep, dtype=torch.float32).flatten().expand(sample.shape[0])
        tensors = [sample, timesteps, kwargs["encoder_hidden_states"]]
        tensors += [added[name] for name in ("text_embeds", "time_ids") if name in added]
        calls.append([t.detach().to(torch.float32).contiguous().numpy().copy() for t in tensors])

    handle = engine.base.components.unet.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        for i, prompt in enumerate(prompts):
            request = GenerationRequest(prompt, seed=i, steps=steps, width=width, height=height, loras=list(loras))
            engine.generate(request)
    finally:
        handle.remove()
    return calls


def export_model(
    engine: Engine,
    folder: Path,
    *,
    int8: str | None = None,
    prompts: Sequence[str] = (),
    loras: Sequence[tuple[str, float]] = (),
    width: int | None = None,
    height: int | None = None,
    progress: bool = False,
    log=lambda _message: None,
) -> Path:
    """Export ``engine``'s base model (eager PyTorch) to ``folder``, replacing what is there: with ``loras`` fused
    into the UNet (the decoder then stays the model's own export's), quantized as ``int8`` says; ``full`` and
    ``hybrid`` calibrate on the UNet inputs of ``prompts`` (with the LoRAs on, at their default steps)."""
    infos = [(engine.adapters.lora(ref), weight) for ref, weight in loras]
    samples = None
    if int8 in ("full", "hybrid"):
        log(f"calibrating on {len(prompts)} prompts")
        steps = None if loras else STEPS  # a LoRA set's own defaults (a few-step LoRA: 4 unguided steps)
        samples = record_unet_inputs(engine, prompts, steps=steps, width=width, height=height, loras=loras)
    with engine.patcher.applied(infos), engine.patcher.unet_fused(infos) if infos else nullcontext():
        return openvino_backend.export(
            engine.base.components,
            folder,
            int8=int8,
            calibration=samples,
            decoder=not infos,
            progress=progress,
            replace=True,
        )
