"""What a comparison runs: the models, one request per grid cell, and where each cell sits.

A comparison has up to five dimensions: models, up to two varied request fields (``--vary``),
prompts and seeds. The grid has two axes, so they are folded onto them by one rule:

* rows: the models, times the first ``--vary`` when there are two;
* columns: the last ``--vary`` (if any), times the seeds, times the prompts (seeds and prompts when
  there are several; a varied seed or prompt is that ``--vary``).

So with no ``--vary`` the rows are models and the columns seeds; with one, the columns are its
values; with two and one model, the rows are the first vary's values and the columns the second's.
A label shows the dimensions of its axis that have more than one value (the first one when none has).
"""

from __future__ import annotations

import itertools
import secrets
import types
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.sampling.limits import check_request
from ssdxl.sampling.request import GenerationRequest

MAX_VARIES = 2
#: CLI spellings of request fields, so ``--vary cfg=3,7`` reads like the generate options
FIELD_ALIASES = {"guidance": "guidance_scale", "cfg": "guidance_scale", "negative": "negative_prompt"}
#: scalar fields that cannot vary: each cell is one image
FIXED_FIELDS = ("samples", "styles_applied")  # one image a cell; styles are expanded once, by the engine
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the comparison: its label in the grid, what to load, and its refiner if any."""

    label: str
    source: str
    refiner: str | None = None


@dataclass(frozen=True)
class Vary:
    """A request field and the values it takes across the grid."""

    field: str
    values: tuple[Any, ...]


@dataclass
class Cell:
    row: int
    column: int
    model: int  # index into Plan.models
    vary: dict[str, Any]  # the varied fields' values in this cell
    request: GenerationRequest


@dataclass
class Plan:
    models: list[ModelSpec]
    varies: list[Vary]
    prompts: list[str]
    seeds: list[int]
    row_axis: list[str]  # dimension names on each axis, outermost first
    column_axis: list[str]
    row_labels: list[str]
    column_labels: list[str]
    cells: list[Cell]  # row by row

    def groups(self) -> list[tuple[int, dict[str, Any], list[int]]]:
        """(model index, varied values, cell indices) per report row, in the order cells run: a model's
        groups are adjacent, so one loaded model serves all of them."""
        found: dict[tuple, list[int]] = {}
        for i, cell in enumerate(self.cells):
            found.setdefault((cell.model, *cell.vary.values()), []).append(i)
        ordered = sorted(found.items(), key=lambda item: item[0][0])  # stable: vary order kept within a model
        return [(key[0], self.cells[indices[0]].vary, indices) for key, indices in ordered]


def default_label(source: str) -> str:
    """A built-in model's name, a folder's name, a file's stem (a repo id's last part)."""
    path = Path(source)
    return source if builtin.resolve(source) is not None else path.name if path.is_dir() else path.stem


def parse_model(text: str) -> ModelSpec:
    """``[LABEL=]SOURCE``; a ``=`` after a path separator belongs to the path."""
    label, sep, source = text.partition("=")
    if not sep or not label or "/" in label or "\\" in label:
        label, source = default_label(text), text
    if not source or not label:
        raise UserError(f"--model must look like [LABEL=]SOURCE; got {text!r}")
    return ModelSpec(label.strip(), source)


def vary_fields() -> dict[str, type]:
    """Request fields that take one plain value (str, int, float, bool), with that type."""
    fields = {}
    for name, hint in typing.get_type_hints(GenerationRequest).items():
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)  # X | None
        kinds = [k for k in (typing.get_args(hint) if optional else (hint,)) if k is not type(None)]
        if len(kinds) == 1 and kinds[0] in (str, int, float, bool) and name not in FIXED_FIELDS:
            fields[name] = kinds[0]
    return fields


def parse_vary(text: str) -> Vary:
    """``FIELD=v1,v2,...`` with each value read as the field's type."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    name = FIELD_ALIASES.get(name, name)
    if not sep or not values.strip():
        raise UserError(f"--vary must look like FIELD=v1,v2,...; got {text!r}")
    fields = vary_fields()
    if name not in fields:
        raise UserError(f"--vary: {name!r} is not a request field that can vary; use one of {', '.join(fields)}")
    return Vary(name, tuple(_convert(name, fields[name], v.strip()) for v in values.split(",")))


def _convert(name: str, kind: type, text: str) -> Any:
    if kind is bool:
        if text.lower() not in _TRUE + _FALSE:
            raise UserError(f"--vary {name}: {text!r} is not true or false")
        return text.lower() in _TRUE
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"--vary {name}: {text!r} is not a{'n' if kind is int else ''} {kind.__name__}") from None


def plan_comparison(
    models: list[ModelSpec],
    template: GenerationRequest,
    *,
    prompts: list[str] | None = None,
    seeds: list[int] | None = None,
    varies: list[Vary] | None = None,
) -> Plan:
    """Every cell's request: ``template`` with the cell's model refiner flag, prompt, seed and varied values.

    ``prompts`` default to the template's; no seeds (or -1) means one random seed shared by every cell.
    """
    varies = list(varies or [])
    prompts = list(prompts or [template.prompt])
    seeds = [s if s >= 0 else secrets.randbelow(2**32) for s in seeds or [-1]]
    if not models:
        raise UserError("give at least one --model")
    labels = [m.label for m in models]
    if len(set(labels)) < len(labels):
        twice = next(label for label in labels if labels.count(label) > 1)
        raise UserError(f"two models are labelled {twice!r}; name them with --model LABEL=SOURCE")
    names = [v.field for v in varies]
    if len(varies) > MAX_VARIES or len(set(names)) < len(names):
        raise UserError(f"--vary takes up to {MAX_VARIES} different fields; got {', '.join(names)}")
    if "seed" in names and len(seeds) > 1:
        raise UserError("vary the seed with --seeds or with --vary seed=..., not both")
    if "prompt" in names and len(prompts) > 1:
        raise UserError("vary the prompt with --prompts-file or with --vary prompt=..., not both")

    dims: dict[str, list[tuple[str, Any]]] = {  # dimension -> (label, value) per position
        "model": [(m.label, i) for i, m in enumerate(models)],
        "seed": [(f"seed {s}", s) for s in seeds],
        "prompt": [(p, p) for p in prompts],
    }
    dims.update({v.field: [(f"{v.field}={value}", value) for value in v.values] for v in varies})  # may replace
    row_axis = ["model", *names[:-1]]
    column_axis = [*names[-1:], *(d for d in ("seed", "prompt") if d not in names and len(dims[d]) > 1)] or ["seed"]
    rows = list(itertools.product(*(dims[d] for d in row_axis)))
    columns = list(itertools.product(*(dims[d] for d in column_axis)))
    cells = []
    for (r, row), (c, column) in itertools.product(enumerate(rows), enumerate(columns)):
        values = dict(zip(row_axis + column_axis, (value for _, value in row + column), strict=True))
        model = values.pop("model")
        fields = {"prompt": prompts[0], "seed": seeds[0], "refiner": models[model].refiner is not None, **values}
        request = replace(template, **fields)
        try:
            check_request(request)  # a bad --vary value fails now, before any model loads
        except UserError as exc:
            raise UserError(f"cell {row[0][0]}, {column[0][0]}: {exc}") from None
        cells.append(Cell(r, c, model, {name: values[name] for name in names}, request))
    return Plan(
        models,
        varies,
        prompts,
        seeds,
        row_axis,
        column_axis,
        [_label(row, [dims[d] for d in row_axis]) for row in rows],
        [_label(column, [dims[d] for d in column_axis]) for column in columns],
        cells,
    )


def _label(position: tuple[tuple[str, Any], ...], axis: list[list[tuple[str, Any]]]) -> str:
    """The labels of the dimensions that vary along the axis; the axis' first dimension when none does."""
    parts = [label for (label, _), dim in zip(position, axis, strict=True) if len(dim) > 1]
    return ", ".join(parts or [position[0][0]])
