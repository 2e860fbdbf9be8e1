"""Student layouts: which resnets and transformer layers of an SDXL-structured UNet remain.

A ``Layout`` is absolute: for every level, the transformer depth of each resnet unit (0 = that
side of the level has no attention) and the kind of mid block. ``Layout.of`` reads one from any
diffusers UNet config; ``unet_config`` writes the student's config.

A ``Rule`` is relative: keep fractions written against SDXL base (``layouts.json``), so the same
rule gives exactly the published SSD-1B / Segmind-Vega UNets from SDXL base and a proportionally
pruned student from any smaller or differently shaped teacher.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ssdxl.errors import UserError

MID_BLOCK_TYPES = {"attention": "UNetMidBlock2DCrossAttn", "resnet": "UNetMidBlock2D", "none": None}
BLOCK_TYPES = {  # (plain, with attention) per side
    "down": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
Depths = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Layout:
    """Transformer depth per resnet unit, per level; resnets per level are the units' count."""

    down: Depths  # per level, shallow to deep (diffusers' down_blocks order)
    up: Depths  # per level, deep to shallow (up_blocks order); one unit more than its down level
    mid: str  # "attention", "resnet" (one resnet, no attention: SSD-1B, Vega) or "none"
    mid_depth: int = 0  # transformer depth of an attention mid block

    @classmethod
    def of(cls, config: dict[str, Any]) -> Layout:
        """The layout of a diffusers ``UNet2DConditionModel`` config."""
        levels = len(config["down_block_types"])
        units = config.get("layers_per_block", 2)
        units = [units] * levels if isinstance(units, int) else list(units)
        per_level = config.get("transformer_layers_per_block", 1)
        per_level = [per_level] * levels if isinstance(per_level, int) else list(per_level)
        reverse = config.get("reverse_transformer_layers_per_block") or list(reversed(per_level))
        down = [_expand(d, n) for d, n in zip(per_level, units, strict=True)]
        up = [_expand(d, n + 1) for d, n in zip(reverse, reversed(units), strict=True)]
        down = [_attention_or_zero(d, t, "down") for d, t in zip(down, config["down_block_types"], strict=True)]
        up = [_attention_or_zero(d, t, "up") for d, t in zip(up, config["up_block_types"], strict=True)]
        mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        kinds = {v: k for k, v in MID_BLOCK_TYPES.items()}
        if mid_type not in kinds:
            raise UserError(f"mid block {mid_type!r} is not one an SDXL-structured UNet uses")
        mid = kinds[mid_type]
        mid_depth = _expand(per_level[-1], 1)[0] if mid == "attention" else 0
        return cls(tuple(down), tuple(up), mid, mid_depth)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        try:
            layout = cls(
                down=tuple(tuple(int(d) for d in level) for level in data["down"]),
                up=tuple(tuple(int(d) for d in level) for level in data["up"]),
                mid=str(data["mid"]),
                mid_depth=int(data.get("mid_depth", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"a layout needs 'down', 'up' (depth lists per level) and 'mid': {exc}") from None
        layout.check()
        return layout

    def to_dict(self) -> dict[str, Any]:
        return {"down": [list(d) for d in self.down], "up": [list(u) for u in self.up], "mid": self.mid,
                "mid_depth": self.mid_depth}  # fmt: skip

    @property
    def transformer_layers(self) -> int:
        return sum(map(sum, self.down)) + sum(map(sum, self.up)) + self.mid_depth

    def check(self) -> None:
        """Raise ``UserError`` unless diffusers can build this layout."""
        if self.mid not in MID_BLOCK_TYPES:
            raise UserError(f"mid must be one of {', '.join(MID_BLOCK_TYPES)}, got {self.mid!r}")
        if (self.mid == "attention") != (self.mid_depth > 0):
            raise UserError("an attention mid block needs mid_depth >= 1, and only it may have one")
        if len(self.down) != len(self.up):
            raise UserError(f"{len(self.down)} down levels but {len(self.up)} up levels")
        for i, (down, up) in enumerate(zip(self.down, reversed(self.up), strict=True)):
            if not down or len(up) != len(down) + 1:
                raise UserError(f"level {i}: {len(down)} down units need {len(down) + 1} up units, got {len(up)}")
            for side, depths in (("down", down), ("up", up)):
                if min(depths) < 0 or (0 in depths and any(depths)):
                    raise UserError(
                        f"level {i} {side}: depths {list(depths)} mix attention and none; a level side "
                        "either has attention in every unit or in none"
                    )
        deepest = self.down[-1]
        if self.mid == "attention" and any(deepest) and deepest[0] != self.mid_depth:
            raise UserError(
                f"diffusers gives the mid block the depth of the deepest down level's first stack "
                f"({deepest[0]}), not {self.mid_depth}"
            )

    def unet_config(self, teacher: dict[str, Any]) -> dict[str, Any]:
        """The teacher's UNet config with this layout's blocks, resnets and depths."""
        self.check()
        config = {k: v for k, v in teacher.items() if not k.startswith("_")}
        config["down_block_types"] = [BLOCK_TYPES["down"][any(d)] for d in self.down]
        config["up_block_types"] = [BLOCK_TYPES["up"][any(u)] for u in self.up]
        units = [len(d) for d in self.down]
        config["layers_per_block"] = units[0] if len(set(units)) == 1 else units
        # Plain levels get diffusers' default depth 1 (unused), except that the deepest down entry
        # is also the mid block's depth.
        down = [list(d) if any(d) else [1] * len(d) for d in self.down]
        if self.mid == "attention" and not any(self.down[-1]):
            down[-1] = [self.mid_depth] * len(down[-1])
        up = [list(u) if any(u) else [1] * len(u) for u in self.up]
        symmetric = all(len(set(d)) == 1 for d in down + up) and [u[0] for u in up] == [d[0] for d in down[::-1]]
        if symmetric:
            config["transformer_layers_per_block"] = [d[0] for d in down]
            config.pop("reverse_transformer_layers_per_block", None)
        else:
            config["transformer_layers_per_block"] = down
            config["reverse_transformer_layers_per_block"] = up
        config["mid_block_type"] = MID_BLOCK_TYPES[self.mid]
        return config

    def describe(self) -> str:
        """One line per level, e.g. ``level 2: down [4, 4] | up [4, 4, 10]``, then the mid block."""
        lines = [
            f"level {i}: down {list(down)} | up {list(up)}"
            for i, (down, up) in enumerate(zip(self.down, reversed(self.up), strict=True))
        ]
        mid = f"attention, depth {self.mid_depth}" if self.mid == "attention" else self.mid
        return "\n".join([*lines, f"mid: {mid}"])


def _expand(depth: int | list[int], units: int) -> list[int]:
    """A config entry (one depth for the level, or one per unit) as one depth per unit."""
    return [int(depth)] * units if isinstance(depth, int) else [int(d) for d in depth][:units]


def _attention_or_zero(depths: list[int], block_type: str, side: str) -> tuple[int, ...]:
    plain, attention = BLOCK_TYPES[side]
    if block_type not in (plain, attention):
        raise UserError(f"{block_type} is not a block type of an SDXL-structured UNet ({plain}, {attention})")
    return tuple(depths) if block_type == attention else (0,) * len(depths)


@dataclass(frozen=True)
class Rule:
    """Keep fractions per attention level (deepest first) and unit, applied to any teacher."""

    name: str
    description: str
    mid: str
    down_keep: tuple[tuple[float, ...], ...]
    up_keep: tuple[tuple[float, ...], ...]

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Rule:
        try:
            return cls(
                name=name,
                description=str(data.get("description", name)),
                mid=str(data.get("mid", "attention")),
                down_keep=tuple(tuple(float(f) for f in level) for level in data.get("down_keep", [])),
                up_keep=tuple(tuple(float(f) for f in level) for level in data.get("up_keep", [])),
            )
        except (TypeError, ValueError) as exc:
            raise UserError(f"layout {name!r}: keep fractions must be lists of numbers per level: {exc}") from None

    def apply(self, teacher: Layout) -> Layout:
        """The student layout for ``teacher``.

        A unit keeps round(fraction x depth) layers, at least one: stacks carry the text into the
        UNet, and SSD-1B / Vega shorten stacks rather than remove them. Only when every unit of a
        level side rounds to zero (depth-1 teachers) does that side lose its attention, and the up
        side of the shallowest attention level never does, so some cross-attention always remains.
        """
        levels = len(teacher.down)
        attended = [i for i in range(levels) if any(teacher.down[i]) or any(teacher.up[levels - 1 - i])]
        rank = {level: r for r, level in enumerate(reversed(attended))}  # 0 = deepest attention level
        down, up = list(teacher.down), list(teacher.up)
        for level, r in rank.items():
            down[level] = _shorten(teacher.down[level], _row(self.down_keep, r), keep_attention=False)
            u = levels - 1 - level
            up[u] = _shorten(teacher.up[u], _row(self.up_keep, r), keep_attention=level == attended[0])
        mid = teacher.mid if self.mid == "attention" or teacher.mid == "none" else self.mid  # "attention": as is
        mid_depth = 0
        if mid == "attention":  # diffusers ties the mid depth to the deepest down level's first stack
            mid_depth = down[-1][0] if any(down[-1]) else teacher.mid_depth
        layout = Layout(tuple(down), tuple(up), mid, mid_depth)
        layout.check()
        return layout


def _row(keep: tuple[tuple[float, ...], ...], rank: int) -> tuple[float, ...] | None:
    return keep[rank] if rank < len(keep) else None


def _shorten(depths: tuple[int, ...], fractions: tuple[float, ...] | None, keep_attention: bool) -> tuple[int, ...]:
    if fractions is None or not any(depths):
        return depths
    n = len(depths)
    position = [0 if n == 1 else math.floor(u * (len(fractions) - 1) / (n - 1) + 0.5) for u in range(n)]
    kept = [min(d, math.floor(fractions[p] * d + 0.5 + 1e-9)) for d, p in zip(depths, position, strict=True)]
    if not any(kept) and not keep_attention:
        return (0,) * n
    return tuple(max(1, k) for k in kept)


# ------------------------------------------------------------------------------------------ lookup


@cache
def _builtin() -> dict[str, Any]:
    text = resources.files("ssdxl.distill").joinpath("layouts.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def layout_names() -> list[str]:
    return list(_builtin())


def resolve_layout(spec: str, teacher: Layout) -> tuple[str, Layout]:
    """(name, layout) for a built-in rule name or a JSON/YAML file.

    A file holding ``down_keep`` / ``up_keep`` is a relative rule like the built-in ones; one
    holding ``down`` / ``up`` depth lists is an absolute layout (the format ``plan --save-layout``
    writes).
    """
    if spec in _builtin():
        return spec, Rule.from_dict(spec, _builtin()[spec]).apply(teacher)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"unknown layout {spec!r}: not one of {', '.join(layout_names())} nor a JSON/YAML file")
    data = read_mapping_file(path, "layout")
    if "down_keep" in data or "up_keep" in data:
        return path.stem, Rule.from_dict(path.stem, data).apply(teacher)
    return path.stem, Layout.from_dict(data)


def read_mapping_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON or YAML file (by suffix) that must hold a mapping; ``what`` names it in errors."""
    try:
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise UserError(f"cannot read {what} file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} file {path} must hold a mapping of settings")
    return data
