"""``ssdxl distill`` and ``ssdxl distill plan`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ssdxl.cli.main import app

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, ["distill", *(str(a) for a in args)])


def test_plan_prints_the_student_and_saves_an_editable_layout(teacher_dir: Path, tmp_path: Path) -> None:
    result = run("plan", "--teacher", teacher_dir, "--layout", "ssd-1b", "--save-layout", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "teacher UNet: 2,972,612 parameters, 24 transformer layers" in out
    assert "student (ssd-1b): 1,885,700 parameters (63.4%), 12 transformer layers" in out
    assert "down_blocks.1 unit 0 <- teacher unit 0: transformer layers [0, 3] of 4" in out
    assert "mid_block <- teacher mid resnet 0 (mid attention removed, teacher depth 4)" in out
    assert "mid_block.resnets.0 ~ teacher mid_block" in out

    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["down"] == [[0, 0], [2, 2]] and saved["mid"] == "resnet"
    again = run("plan", "--teacher", teacher_dir, "--layout", tmp_path / "s.json", "--select", "first", "--json")
    assert again.exit_code == 0, again.output
    plan = json.loads(again.output)
    assert plan["student"] == saved and plan["select"] == "first"
    assert plan["units"][2]["layers"] == [0, 1]  # down_blocks.1 unit 0 keeps the first two layers


def test_plan_of_a_full_size_teacher_reads_only_its_config(tmp_path: Path) -> None:
    from ssdxl.models.presets import get_preset

    (tmp_path / "sdxl" / "unet").mkdir(parents=True)
    (tmp_path / "sdxl" / "unet" / "config.json").write_text(json.dumps(get_preset("sdxl-base").unet))
    for layout, line in [
        ("ssd-1b", "student (ssd-1b): 1,331,334,404 parameters (51.9%), 34 transformer layers"),
        ("vega", "student (vega): 745,225,604 parameters (29.0%), 15 transformer layers"),
    ]:
        result = run("plan", "--teacher", tmp_path / "sdxl", "--layout", layout)
        assert result.exit_code == 0, result.output
        assert "teacher UNet: 2,567,463,684 parameters, 70 transformer layers" in result.output
        assert line in result.output


def test_distill_command_trains_a_student(teacher_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    args = [
        "--teacher",
        teacher_dir,
        "--out",
        out,
        "--layout",
        "vega",
        "--steps",
        2,
        "--batch-size",
        2,
        "--kd",
        "block",
    ]
    result = run(*args, "--size", "32x32", "--checkpoint-every", 1, "--ema-decay", 0)
    assert result.exit_code == 0, result.output
    assert (out / "model_index.json").is_file() and (out / "distill-report.md").is_file()
    assert "feature KD (block): 5 pairs" in result.output
    assert json.loads((out / "distill" / "config.json").read_text())["kd"] == "block"
    resumed = run("--out", out, "--resume")  # already finished: nothing to do but re-export
    assert resumed.exit_code == 0, resumed.output


def test_progressive_stages_from_a_config_file(teacher_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "stages.yaml"
    config.write_text(
        f"teacher: {teacher_dir}\nout: {tmp_path / 'student'}\nbatch_size: 2\nema_decay: 0\nspeed_repeats: 0\n"
        "stages: [{layout: ssd-1b, steps: 1}, {layout: vega, steps: 1}]\n"
    )
    result = run("--config", config, "--kd", "none")  # options given on the command line win
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "student" / "distill" / "config.json").read_text())
    assert [s["layout"] for s in saved["stages"]] == ["ssd-1b", "vega"] and saved["kd"] == "none"
    assert (tmp_path / "student" / "distill" / "stages" / "1-ssd-1b" / "model_index.json").is_file()


def test_plan_of_a_preset_name_needs_no_weights() -> None:
    """``--teacher sdxl-base`` (any preset) is planned from the preset's config on the meta device: no download."""
    for teacher, layout, lines in [
        ("sdxl-base", "ssd-1b", ["teacher UNet: 2,567,463,684 parameters, 70 transformer layers",
                                 "student (ssd-1b): 1,331,334,404 parameters (51.9%), 34 transformer layers"]),
        ("sdxl-base", "vega", ["student (vega): 745,225,604 parameters (29.0%), 15 transformer layers"]),
        ("ssd-1b", "vega", ["teacher UNet: 1,331,334,404 parameters, 34 transformer layers"]),
    ]:  # fmt: skip
        result = run("plan", "--teacher", teacher, "--layout", layout)
        assert result.exit_code == 0, result.output
        assert all(line in result.output for line in lines), result.output
    result = run("plan", "--teacher", "sdxl-base", "--select", "importance")
    assert result.exit_code == 2 and "preset without weights" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_user_errors_are_one_line(teacher_dir: Path, tmp_path: Path) -> None:
    cases = [
        (["--teacher", teacher_dir, "--layout", "vega"], "missing --out"),
        (["--teacher", teacher_dir, "--out", tmp_path / "x", "--layout", "nope"], "unknown layout 'nope'"),
        (["--teacher", teacher_dir, "--out", tmp_path / "y", "--layout", "vega", "--kd", "deep"], "--kd must be"),
        (["--out", tmp_path / "z", "--resume"], "holds no distillation run"),
        (["plan", "--teacher", tmp_path / "missing"], "not found"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
