"""Full size: SSD-1B and Vega built by ``distill`` from a random-weight SDXL base UNet (exact published
parameter counts), and every loss term computed once (teacher + student forward with hooks, student
backward), in bfloat16 at 32x32 latents.

Skipped unless ``SSDXL_FULLSIZE=1`` (2.6B-parameter teacher: 10.7 GiB of RAM at its peak, about a
minute on one CPU core of the project's machine). ``-s`` shows the time and memory of each part;
``SSDXL_FULLSIZE_LATENT`` sets the latent side (default 32):

    SSDXL_FULLSIZE=1 python -m pytest tests/distill/test_distill_fullsize.py -s
"""

from __future__ import annotations

import gc
import os
import resource
import time

import pytest
import torch
from diffusers import UNet2DConditionModel

from ssdxl.distill.features import Taps, feature_pairs
from ssdxl.distill.layout import Layout, resolve_layout
from ssdxl.distill.losses import Weights, distillation_loss
from ssdxl.distill.student import build_student, make_plan
from ssdxl.models.presets import get_preset

pytestmark = pytest.mark.skipif(
    os.environ.get("SSDXL_FULLSIZE") != "1",
    reason="full-size SDXL check: set SSDXL_FULLSIZE=1 (11 GiB of RAM, a minute or more)",
)
PUBLISHED = {"ssd-1b": 1_331_334_404, "vega": 745_225_604}


LATENT = int(os.environ.get("SSDXL_FULLSIZE_LATENT", "32"))  # latent side; 128 is SDXL's 1024 px


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class SavedActivations:
    """Bytes autograd keeps for backward (the activation memory of a training step), counted once per
    storage; the parameters it also keeps a reference to are not activations."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameters:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def gb(self) -> float:
        return sum(self.storages.values()) / 2**30


def test_full_size_students_and_every_loss_term() -> None:
    start = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built directly in bf16: never the 10 GB float32 copy
    try:
        teacher = UNet2DConditionModel.from_config(get_preset("sdxl-base").unet).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default)
    print(f"\nteacher built: {sum(p.numel() for p in teacher.parameters()):,} params, "
          f"{time.perf_counter() - start:.0f} s, peak {peak_gb():.1f} GB")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    inputs = {
        "sample": torch.randn(1, 4, LATENT, LATENT, generator=g).bfloat16(),
        "timestep": torch.tensor([500]),
        "encoder_hidden_states": torch.randn(1, 77, 2048, generator=g).bfloat16(),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(1, 1280, generator=g).bfloat16(),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]]).bfloat16(),
        },
    }
    eps = torch.randn(1, 4, LATENT, LATENT, generator=g)
    teacher_layout = Layout.of(dict(teacher.config))
    for name in ("ssd-1b", "vega"):
        t0 = time.perf_counter()
        plan = make_plan(teacher_layout, resolve_layout(name, teacher_layout)[1], "spread")
        student = build_student(teacher, plan).requires_grad_(True)
        assert sum(p.numel() for p in student.parameters()) == PUBLISHED[name]
        built = time.perf_counter() - t0
        pairs = feature_pairs(plan, "layer")
        t0, saved = time.perf_counter(), SavedActivations(student)
        with Taps(student, [s for s, _ in pairs]) as s_taps, Taps(teacher, [t for _, t in pairs]) as t_taps:
            with torch.no_grad():
                teacher_pred = teacher(**inputs).sample
            with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
                student_pred = student(**inputs).sample
            losses = distillation_loss(student_pred, eps, teacher_pred, s_taps.out, t_taps.out, pairs, Weights())
            losses["total"].backward()
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
        print(f"{name}: {PUBLISHED[name]:,} params (exact), built in {built:.0f} s; {len(pairs)} feature pairs; "
              f"losses {', '.join(f'{k} {v.item():.4g}' for k, v in losses.items())}; {LATENT}x{LATENT} latents: "
              f"forward+backward {time.perf_counter() - t0:.0f} s, {saved.gb:.2f} GB of saved activations; "
              f"peak {peak_gb():.1f} GB")  # fmt: skip
        del student, losses, student_pred, s_taps, t_taps
        gc.collect()
    print(f"total {time.perf_counter() - start:.0f} s, peak {peak_gb():.1f} GB")
