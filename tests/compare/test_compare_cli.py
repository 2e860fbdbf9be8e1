"""``ssdxl compare`` on the built-in models at their 64x64 size and 2 steps: the grid, the cells (with
parameters --from-png re-creates), the reports, --vary, reproducibility and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.compare.grid import margins
from ssdxl.output.infotext import parse_infotext

runner = CliRunner()
PROMPT = "a red circle on a navy background"
CELL = 64  # the built-in models' size


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """Two models x two seeds, with two adherence prompts per model."""
    out = tmp_path_factory.mktemp("compare") / "grid.png"
    result = run(
        "compare", PROMPT, "--model", "shapes", "--model", "student=shapes-ssd1b", "--seeds", "1,2", "--steps", 2,
        "--adherence", "--adherence-prompts", 2, "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, json.loads(out.with_suffix(".json").read_text())


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_grid_is_labels_plus_rows_by_columns_cells(compared):
    out, record = compared
    assert record["row_labels"] == ["shapes", "student"] and record["column_labels"] == ["seed 1", "seed 2"]
    left, top = margins(record["row_labels"], record["column_labels"], CELL)
    with Image.open(out) as grid:
        assert grid.size == (left + 2 * CELL, top + 2 * CELL)


def test_cells_folder_holds_every_cell_with_its_parameters(compared):
    out, record = compared
    cells = sorted((out.parent / "grid").glob("*.png"))
    assert len(cells) == 4 and {str(c) for c in cells} == {c["path"] for c in record["cells"]}
    for cell in record["cells"]:
        with Image.open(cell["path"]) as image:
            info = parse_infotext(image.text["parameters"])
        assert (int(info["Seed"]), int(info["Steps"]), info["prompt"]) == (cell["seed"], 2, PROMPT)
        assert info["Model"] == ("shapes" if cell["model"] == "shapes" else "shapes-ssd1b")


def test_report_has_a_row_per_model_with_measurements(compared):
    out, record = compared
    assert [r["model"] for r in record["rows"]] == ["shapes", "student"]
    for row in record["rows"]:
        assert row["images"] == 2 and row["seconds_per_image"] > row["seconds_per_step"] > 0
        assert row["peak_rss_bytes"] > 0 and row["unet_parameters"] > 1_000_000
        assert 0 <= row["adherence_all_right"] <= 1
    assert record["rows"][0]["unet_parameters"] > record["rows"][1]["unet_parameters"]  # the student is smaller
    table = out.with_suffix(".md").read_text()
    assert "warm-up excluded" in table and "| student |" in table and "adherence" in table


def test_a_cell_is_recreated_by_generate_from_png(compared, tmp_path):
    _, record = compared
    cell = record["cells"][3]
    again = tmp_path / "again.png"
    result = run("generate", "--from-png", cell["path"], "-o", again, "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(cell["path"]), pixels(again))


def test_vary_steps_gives_different_cells_and_a_seed_gives_the_same_pixels(compared, tmp_path):
    _, first = compared
    out = tmp_path / "steps.png"
    result = run("compare", PROMPT, "-m", "shapes", "--seed", 1, "--vary", "steps=2,3", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["column_labels"] == ["steps=2", "steps=3"] and [r["vary"] for r in record["rows"]] == [
        {"steps": 2},
        {"steps": 3},
    ]
    two, three = (pixels(c["path"]) for c in record["cells"])
    assert not np.array_equal(two, three)
    assert np.array_equal(two, pixels(first["cells"][0]["path"]))  # shapes, seed 1, 2 steps in another run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "shapes", "--vary", "colour=red,blue"], "not a request field"),
        (["--model", "shapes", "--vary", "steps=two"], "not an int"),
        (["--refiner", "shapes", "--model", "shapes"], "--refiner must follow"),
        (["--model", "shapes", "--model", "shapes"], "labelled 'shapes'"),
        (["--model", "shapes", "--seeds", "1,x"], "--seeds"),
        (["--model", "shapes", "-o", "grid.gif"], "unsupported output format"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message, tmp_path):
    result = run("compare", PROMPT, *args)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_prompts_file_gives_a_column_per_prompt(tmp_path):
    texts = [PROMPT, "a green square at the bottom on a white background"]
    prompts, out = tmp_path / "prompts.txt", tmp_path / "prompts.png"
    prompts.write_text("\n\n".join(texts) + "\n")  # blank lines are skipped
    result = run("compare", "--prompts-file", prompts, "-m", "shapes", "--seed", 5, "--steps", 2, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["axes"]["columns"] == ["prompt"] and record["column_labels"] == texts
    assert [c["prompt"] for c in record["cells"]] == texts and record["rows"][0]["images"] == 2


def test_prompt_or_prompts_file_is_required(tmp_path):
    assert run("compare", "-m", "shapes").exit_code == 2
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    result = run("compare", "-m", "shapes", "--prompts-file", empty)
    assert result.exit_code == 2 and "no prompts" in result.output


def test_refiner_belongs_to_the_model_before_it(tiny_dir, tmp_path):
    out, refiner = tmp_path / "refined.png", tiny_dir("sdxl-refiner")
    result = run(
        "compare", PROMPT, "-m", f"base={tiny_dir('vega')}", "--refiner", refiner, "-m", "shapes",
        "--seed", 3, "--steps", 2, "-o", out, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert [m["refiner"] for m in record["models"]] == [str(refiner), None]
    assert record["rows"][0]["refiner_unet_parameters"] > 0 and record["rows"][1]["refiner_unet_parameters"] is None
    with Image.open(record["cells"][0]["path"]) as image:
        assert json.loads(image.text["ssdxl"])["refiner_model"] == str(refiner)
    assert "refiner UNet parameters" in out.with_suffix(".md").read_text()
