"""Which student feature is matched with which teacher feature, and the hooks that capture them.

``layer`` (the default, SSD-1B's "layer-level" loss): every resnet output and every transformer
layer output. A kept part is matched where the parts it stands in for end: student layer ``i``
of a stack that keeps teacher layers ``k_0 < k_1 < ...`` is matched with teacher layer
``k_{i+1} - 1`` (the last kept layer with the stack's last layer), so the removed layers' work
is asked of the layer before them. A student unit that absorbed removed units is matched, at its
end, with the last of them; one whose attention was removed is matched with the teacher's stack
output; a mid block reduced to one resnet with the teacher's whole mid block.

``block`` (BK-SDM): the output of every down block, the mid block and every up block.

``none``: no feature pairs (and no teacher pass at all when the output KD weight is 0 too).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ssdxl.distill.student import MID_STACK, Plan, UnitMap

KD_LEVELS = ("layer", "block", "none")
Pair = tuple[str, str]  # (student module, teacher module)


def feature_pairs(plan: Plan, level: str) -> list[Pair]:
    if level == "none":
        return []
    if level == "block":
        return _block_pairs(plan)
    if level == "layer":
        return _layer_pairs(plan)
    raise ValueError(f"feature KD level must be one of {KD_LEVELS}, got {level!r}")


def _block_pairs(plan: Plan) -> list[Pair]:
    levels = len(plan.student.down)
    names = [f"down_blocks.{i}" for i in range(levels)]
    names += ["mid_block"] if plan.student.mid != "none" else []
    names += [f"up_blocks.{i}" for i in range(levels)]
    return [(n, n) for n in names]


def _layer_pairs(plan: Plan) -> list[Pair]:
    pairs: list[Pair] = []
    for u in plan.side("down"):
        pairs += _unit_pairs(plan, u)
    if plan.student.mid == "attention":
        pairs.append(("mid_block.resnets.0", "mid_block.resnets.0"))
        for i, target in enumerate(_span_ends(plan.mid_layers, plan.teacher.mid_depth)):
            pairs.append((f"{MID_STACK}.transformer_blocks.{i}", f"{MID_STACK}.transformer_blocks.{target}"))
        pairs.append(("mid_block.resnets.1", "mid_block.resnets.1"))
    elif plan.student.mid == "resnet":
        pairs.append(("mid_block.resnets.0", "mid_block"))
    for u in plan.side("up"):
        pairs += _unit_pairs(plan, u)
    return pairs


def _unit_pairs(plan: Plan, u: UnitMap) -> list[Pair]:
    """A unit's resnet, its kept layers, and its end when it absorbed removed units."""

    def unit_output(unit: int) -> str:
        """A teacher unit's last module: its stack, or its resnet when it has none."""
        kind = "attentions" if plan.teacher_has_stack(u.block, unit) else "resnets"
        return f"{u.block}.{kind}.{unit}"

    student_resnet = f"{u.block}.resnets.{u.student}"
    if not u.layers:
        return [(student_resnet, unit_output(u.end))]
    stack = f"{u.block}.attentions.{u.student}"
    pairs = [(student_resnet, f"{u.block}.resnets.{u.teacher}")]
    for i, target in enumerate(_span_ends(u.layers, u.depth)):
        pairs.append((f"{stack}.transformer_blocks.{i}", f"{u.teacher_stack}.transformer_blocks.{target}"))
    if u.end > u.teacher:
        pairs.append((stack, unit_output(u.end)))
    return pairs


def _span_ends(kept: tuple[int, ...], depth: int) -> list[int]:
    """For each kept layer, the last teacher layer it stands in for."""
    return [k - 1 for k in kept[1:]] + [depth - 1]


class Taps:
    """Forward hooks that keep the latest output of named modules (``.out[name]``); a context manager."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        self.out: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._keeper(n)) for n in dict.fromkeys(names)]

    def _keeper(self, name: str) -> Callable[..., None]:
        def keep(_module: torch.nn.Module, _args: object, output: object) -> None:
            self.out[name] = _tensor(output)

        return keep

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def _tensor(output: object) -> torch.Tensor:
    """The hidden states in a module's output: down blocks return (states, skips), stacks a tuple."""
    if isinstance(output, tuple):
        output = output[0]
    return getattr(output, "sample", output)  # type: ignore[return-value]


def describe_pairs(pairs: list[Pair]) -> str:
    return "\n".join(f"  {s} ~ teacher {t}" for s, t in pairs) or "  (none)"
