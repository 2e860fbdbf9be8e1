"""The comparison plan (axes rule, labels, --vary parsing), the refiner attachment and the grid layout,
without generating anything."""

import pytest
from PIL import Image

from ssdxl.cli.compare import attach_refiners
from ssdxl.compare.grid import LETTERBOX, labelled_grid, margins
from ssdxl.compare.plan import ModelSpec, parse_model, parse_vary, plan_comparison
from ssdxl.errors import UserError
from ssdxl.sampling.request import GenerationRequest

TWO = [ModelSpec("a", "shapes"), ModelSpec("b", "shapes-ssd1b", refiner="./r")]


def plan(models=TWO, seeds=(1, 2), varies=(), prompts=None):
    template = GenerationRequest("a red circle", steps=2)
    return plan_comparison(
        list(models), template, seeds=list(seeds), varies=[parse_vary(v) for v in varies], prompts=prompts
    )


def test_default_axes_are_models_by_seeds():
    p = plan()
    assert (p.row_axis, p.column_axis) == (["model"], ["seed"])
    assert (p.row_labels, p.column_labels) == (["a", "b"], ["seed 1", "seed 2"])
    assert [(c.row, c.column, c.request.seed) for c in p.cells] == [(0, 0, 1), (0, 1, 2), (1, 0, 1), (1, 1, 2)]
    assert [c.request.refiner for c in p.cells] == [False, False, True, True]  # b has a refiner


def test_one_vary_is_the_columns_and_two_with_one_model_are_rows_by_columns():
    p = plan(seeds=[7], varies=["steps=4,8,20"])
    assert (p.row_axis, p.column_axis, p.column_labels) == (["model"], ["steps"], ["steps=4", "steps=8", "steps=20"])
    assert [c.request.steps for c in p.cells[:3]] == [4, 8, 20] and {c.request.seed for c in p.cells} == {7}
    p = plan(models=TWO[:1], seeds=[7], varies=["steps=4,8", "scheduler=Euler,UniPC"])
    assert p.row_labels == ["steps=4", "steps=8"] and p.column_labels == ["scheduler=Euler", "scheduler=UniPC"]
    assert [(c.request.steps, c.request.scheduler) for c in p.cells] == [
        (4, "Euler"),
        (4, "UniPC"),
        (8, "Euler"),
        (8, "UniPC"),
    ]
    assert [vary for _, vary, _ in p.groups()] == [c.vary for c in p.cells]  # one report row per cell here


def test_prompts_and_several_seeds_multiply_the_columns():
    p = plan(models=TWO[:1], varies=["cfg=1.5,3"], prompts=["x", "y"])
    assert p.column_axis == ["guidance_scale", "seed", "prompt"] and len(p.column_labels) == 8
    assert p.column_labels[1] == "guidance_scale=1.5, seed 1, y"
    assert [len(cells) for _, _, cells in p.groups()] == [4, 4]  # a row: 2 seeds x 2 prompts


@pytest.mark.parametrize(
    ("text", "field", "values"),
    [
        ("steps=4,8", "steps", (4, 8)),
        ("guidance=1,2.5", "guidance_scale", (1.0, 2.5)),
        ("scheduler=Euler a,DPM++ 2M Karras", "scheduler", ("Euler a", "DPM++ 2M Karras")),
        ("cache-interval=1,3", "cache_interval", (1, 3)),
        ("refiner=false,true", "refiner", (False, True)),
    ],
)
def test_vary_values_take_the_fields_type(text, field, values):
    vary = parse_vary(text)
    assert (vary.field, vary.values) == (field, values)
    assert [type(v) for v in vary.values] == [type(v) for v in values]


@pytest.mark.parametrize("text", ["colour=red", "steps", "steps=four", "samples=1,2", "loras=a", "refiner=maybe"])
def test_bad_vary_is_a_user_error(text):
    with pytest.raises(UserError):
        parse_vary(text)


def test_plan_refuses_ambiguous_requests():
    with pytest.raises(UserError, match="labelled 'a'"):
        plan(models=[ModelSpec("a", "shapes"), ModelSpec("a", "shapes-ssd1b")])
    with pytest.raises(UserError, match="up to 2"):
        plan(varies=["steps=1", "cfg=1", "scheduler=Euler"])
    with pytest.raises(UserError, match="not both"):
        plan(seeds=[1, 2], varies=["seed=3,4"])


def test_model_labels_and_refiners_follow_the_option_order():
    assert parse_model("sd15=./models/v1-5.safetensors") == ModelSpec("sd15", "./models/v1-5.safetensors")
    assert parse_model("./models/v1-5.safetensors").label == "v1-5"
    assert parse_model("shapes").label == "shapes" and parse_model("segmind/SSD-1B").label == "SSD-1B"
    order = ["prompt", "model", "model", "refiner", "model"]
    specs = attach_refiners(["a=./a", "c=./c", "d=./d"], ["./r"], order)
    assert [s.refiner for s in specs] == [None, "./r", None]
    with pytest.raises(UserError, match="must follow"):
        attach_refiners(["a"], ["./r"], ["refiner", "model"])
    with pytest.raises(UserError, match="two --refiner"):
        attach_refiners(["a"], ["./r", "./s"], ["model", "refiner", "refiner"])


def test_grid_is_labels_plus_cells_with_smaller_cells_letterboxed():
    small = Image.new("RGB", (32, 48), (255, 0, 0))
    big = Image.new("RGB", (64, 64), (0, 0, 255))
    rows, columns = ["model a", "a much longer model label"], ["seed 1", "scheduler=DPM++ 2M Karras"]
    grid = labelled_grid([[big, small], [big, big]], rows, columns, zoom=2)
    left, top = margins(rows, columns, 128)
    assert left > 0 and top > 0 and grid.size == (left + 2 * 128, top + 2 * 128)
    assert grid.getpixel((left + 128 + 2, top + 2)) == LETTERBOX  # beside the 32x48 cell, zoomed to 64x96
    assert grid.getpixel((left + 128 + 64, top + 64)) == (255, 0, 0)
    assert grid.getpixel((left + 10, top + 128 + 10)) == (0, 0, 255)
