"""The distillation objective: task loss + lambda_out * output KD + lambda_feat * feature KD, all MSE.

* task: the student's noise prediction against the noise actually added (what the teacher was
  trained on, so the student can also learn beyond its teacher);
* output KD: the student's prediction against the teacher's on the same input;
* feature KD: the sum over matched pairs of MSE(student feature, teacher feature), as the released
  SSD-1B / BK-SDM scripts sum them (so the term grows with the number of pairs; ``features``
  decides which).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssdxl.distill.features import Pair


@dataclass(frozen=True)
class Weights:
    out: float = 0.5
    feat: float = 0.5


def distillation_loss(
    student_pred: torch.Tensor,
    eps: torch.Tensor,
    teacher_pred: torch.Tensor | None,
    student_feats: dict[str, torch.Tensor],
    teacher_feats: dict[str, torch.Tensor],
    pairs: list[Pair],
    weights: Weights,
) -> dict[str, torch.Tensor]:
    """Every term (float32) and their weighted sum under ``"total"``; KD terms are 0 without a teacher pass."""
    task = F.mse_loss(student_pred.float(), eps.float())
    zero = task.new_zeros(())
    out = F.mse_loss(student_pred.float(), teacher_pred.float()) if teacher_pred is not None else zero
    feat = sum((F.mse_loss(student_feats[s].float(), teacher_feats[t].float()) for s, t in pairs), zero)
    total = task + weights.out * out + weights.feat * feat
    return {"total": total, "task": task, "out": out, "feat": feat}
