"""Optimiser pieces both stages share: AdamW parameter groups, cosine schedule, bf16 autocast."""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.optim.lr_scheduler import LambdaLR


def adamw(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW that leaves biases, norms and embedding tables undecayed.

    Decaying the 49,408-row token tables would only shrink the rows no caption ever uses.
    """
    decay, plain = [], []
    for name, p in named:
        if p.requires_grad:
            (plain if p.ndim < 2 or "embedding" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), foreach=True)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> LambdaLR:
    """Linear warm-up, then cosine decay to zero at ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def optimizer_step(
    loss: torch.Tensor, params: Iterable[torch.nn.Parameter], optimizer: torch.optim.Optimizer, schedule: LambdaLR
) -> None:
    """One step of every stage: backward, clip the gradient norm to 1, step, advance the schedule, clear."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def autocast(enabled: bool) -> AbstractContextManager[object]:
    """bfloat16 autocast on CPU (AMX matmuls); weights, grads and optimiser state stay float32."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else nullcontext()
