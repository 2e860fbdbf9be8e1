"""The student: which teacher unit and transformer layer each student part comes from, and its weights.

A UNet level is a sequence of *units* (a resnet, then its transformer stack if the level has
attention). A student keeps the first units of each down level; its up units are the teacher's
units that read the same skip connections. Each kept part stands in for the removed parts that
followed it, up to the next kept one: that is where its output is matched during distillation
(see ``features``). Within a shortened stack, which layers are kept is ``select``:

* ``first``: layers 0..k-1;
* ``spread``: evenly spread over the stack, first and last included (community analysis of
  SSD-1B suggests its depth-4 stacks kept spread-out layers of the depth-10 ones);
* ``importance``: the k layers whose removal changes the teacher's output most (``selection``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel

from ssdxl.distill.layout import Layout
from ssdxl.errors import UserError

SELECTIONS = ("first", "spread", "importance")
UNIT_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)$")
LAYER_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
MID_LAYER_KEY = re.compile(r"^mid_block\.attentions\.0\.transformer_blocks\.(\d+)\.(.+)$")
MID_STACK = "mid_block.attentions.0"


@dataclass(frozen=True)
class UnitMap:
    """One student unit: initialised from teacher unit ``teacher``, standing in for units up to ``end``."""

    block: str  # "down_blocks.2", "up_blocks.0"
    student: int
    teacher: int
    end: int
    depth: int  # transformer layers in the teacher unit's stack (0: none)
    layers: tuple[int, ...]  # the teacher layers the student's stack keeps, in order (empty: no stack)

    @property
    def teacher_stack(self) -> str:
        return f"{self.block}.attentions.{self.teacher}"


@dataclass(frozen=True)
class Plan:
    """Everything that ties a student to its teacher: layouts, unit and layer correspondence."""

    teacher: Layout
    student: Layout
    units: tuple[UnitMap, ...]
    mid_layers: tuple[int, ...]  # teacher mid-stack layers kept (empty unless the student keeps mid attention)
    select: str

    @cached_property
    def _by_student(self) -> dict[tuple[str, int], UnitMap]:
        return {(u.block, u.student): u for u in self.units}

    def unit(self, block: str, student: int) -> UnitMap:
        return self._by_student[(block, student)]

    def teacher_has_stack(self, block: str, unit: int) -> bool:
        side, level = block.split(".")
        return bool((self.teacher.down if side == "down_blocks" else self.teacher.up)[int(level)][unit])

    def teacher_key(self, key: str) -> str:
        """The teacher parameter a student parameter is copied from."""
        if m := UNIT_KEY.match(key):
            blocks, level, kind, index, rest = m.groups()
            unit = self.unit(f"{blocks}.{level}", int(index))
            if kind == "attentions" and (layer := LAYER_KEY.match(rest)):
                rest = f"transformer_blocks.{unit.layers[int(layer[1])]}.{layer[2]}"
            return f"{blocks}.{level}.{kind}.{unit.teacher}.{rest}"
        if m := MID_LAYER_KEY.match(key):
            return f"{MID_STACK}.transformer_blocks.{self.mid_layers[int(m[1])]}.{m[2]}"
        return key  # embeddings, conv in/out, samplers and mid resnets keep their names

    def shortened_stacks(self) -> list[str]:
        """Teacher stacks the student keeps only some layers of: where ``select`` matters."""
        stacks = [u.teacher_stack for u in self.units if 0 < len(u.layers) < u.depth]
        if 0 < len(self.mid_layers) < self.teacher.mid_depth:
            stacks.append(MID_STACK)
        return stacks

    def side(self, prefix: str) -> list[UnitMap]:
        """The units of the down (``"down"``) or up (``"up"``) path, in forward order."""
        return [u for u in self.units if u.block.startswith(prefix)]

    def describe(self) -> str:
        """The plan as a reader checks it: per student unit, where it comes from and what it keeps."""
        lines = [_describe_unit(u) for u in self.side("down")]
        if self.student.mid == "attention":
            lines.append(
                f"  mid_block <- teacher mid block: layers {list(self.mid_layers)} of {self.teacher.mid_depth}"
            )
        elif self.student.mid == "resnet":
            removed = (
                f" (mid attention removed, teacher depth {self.teacher.mid_depth})" if self.teacher.mid_depth else ""
            )
            lines.append(f"  mid_block <- teacher mid resnet 0{removed}")
        else:
            lines.append("  mid_block removed")
        return "\n".join(lines + [_describe_unit(u) for u in self.side("up")])

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher.to_dict(),
            "student": self.student.to_dict(),
            "units": [asdict(u) for u in self.units],
            "mid_layers": list(self.mid_layers),
            "select": self.select,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(
            teacher=Layout.from_dict(data["teacher"]),
            student=Layout.from_dict(data["student"]),
            units=tuple(UnitMap(**{**u, "layers": tuple(u["layers"])}) for u in data["units"]),
            mid_layers=tuple(data["mid_layers"]),
            select=data["select"],
        )


def _describe_unit(u: UnitMap) -> str:
    source = f"teacher unit {u.teacher}"
    if u.end > u.teacher:
        source += f" (stands in for units {u.teacher}-{u.end})"
    if u.layers:
        kept = f"transformer layers {list(u.layers)} of {u.depth}"
    else:
        kept = f"attention removed (teacher depth {u.depth})" if u.depth else "no attention"
    return f"  {u.block} unit {u.student} <- {source}: {kept}"


def make_plan(
    teacher: Layout, student: Layout, select: str = "spread", scores: dict[str, list[float]] | None = None
) -> Plan:
    """Match every student unit and layer to the teacher's; ``UserError`` if the student is not a part of it.

    ``scores`` (teacher stack -> importance per layer) are needed for ``select="importance"``.
    """
    if select not in SELECTIONS:
        raise UserError(f"layer selection must be one of {', '.join(SELECTIONS)}, got {select!r}")
    student.check()
    levels = len(teacher.down)
    if len(student.down) != levels:
        raise UserError(f"the student has {len(student.down)} levels, the teacher {levels}; levels cannot change")

    def layers(stack: str, depth: int, keep: int) -> tuple[int, ...]:
        if keep > depth:
            raise UserError(f"{stack}: the student wants {keep} transformer layers, the teacher has {depth}")
        return choose_layers(depth, keep, select, (scores or {}).get(stack))

    down_units, up_units = [], []
    for i in range(levels):
        n, m = len(teacher.down[i]), len(student.down[i])
        if m > n:
            raise UserError(f"level {i}: the student wants {m} resnets, the teacher has {n}")
        down_end = [*range(m - 1), n - 1]  # the first m units are kept; the last absorbs the rest
        up_kept = [n - 1 - down_end[m - 1 - j] for j in range(m)] + [n]  # the up units reading those skips
        up_end = [k - 1 for k in up_kept[1:]] + [n]
        u = levels - 1 - i
        for units, block, kept, ends, t_depths, s_depths in (
            (down_units, f"down_blocks.{i}", list(range(m)), down_end, teacher.down[i], student.down[i]),
            (up_units, f"up_blocks.{u}", up_kept, up_end, teacher.up[u], student.up[u]),
        ):
            for j, (t, end) in enumerate(zip(kept, ends, strict=True)):
                stack = f"{block}.attentions.{t}"
                units.append(UnitMap(block, j, t, end, t_depths[t], layers(stack, t_depths[t], s_depths[j])))
    up_units.sort(key=lambda unit: int(unit.block.split(".")[1]))  # forward order: deepest up block first

    mid_layers: tuple[int, ...] = ()
    if student.mid != "none" and teacher.mid == "none":
        raise UserError("the teacher has no mid block to take the student's from")
    if student.mid == "attention":
        if teacher.mid != "attention":
            raise UserError("the student keeps mid attention but the teacher's mid block has none")
        mid_layers = layers(MID_STACK, teacher.mid_depth, student.mid_depth)
    return Plan(teacher, student, tuple(down_units + up_units), mid_layers, select)


def choose_layers(depth: int, keep: int, select: str, scores: list[float] | None = None) -> tuple[int, ...]:
    """Which ``keep`` of a stack's ``depth`` layers to keep, in order."""
    if keep in (0, depth) or select == "first":
        return tuple(range(keep))
    if select == "spread":
        return tuple(math.floor(i * (depth - 1) / (keep - 1) + 0.5) for i in range(keep)) if keep > 1 else (0,)
    if scores is None or len(scores) != depth:
        raise ValueError("importance selection needs one score per layer")
    return tuple(sorted(sorted(range(depth), key=lambda i: -scores[i])[:keep]))


def build_student(teacher: UNet2DConditionModel, plan: Plan) -> UNet2DConditionModel:
    """The student UNet, every weight a copy of its teacher counterpart (in the teacher's dtype and device)."""
    config = plan.student.unet_config(dict(teacher.config))
    with init_empty_weights():
        student = UNet2DConditionModel.from_config(config)
    source = teacher.state_dict()
    state = {k: source[plan.teacher_key(k)].detach().clone() for k in student.state_dict()}
    student.load_state_dict(state, strict=True, assign=True)
    return student
