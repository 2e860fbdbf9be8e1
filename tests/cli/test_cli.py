"""The ``ssdxl`` command: files written, metadata, --from-png re-creation, --json, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssdxl.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_generate_writes_png_with_parameters_and_from_png_recreates_it(tiny_dir, tmp_path):
    out = tmp_path / "a.png"
    result = run(
        "generate",
        "a red circle",
        "-m",
        tiny_dir("vega"),
        "-o",
        out,
        "--seed",
        5,
        "--steps",
        3,
        "-W",
        80,
        "-H",
        48,
        "-n",
        "blurry",
        "-s",
        "DPM++ 2M Karras",
        "-q",
    )
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.size == (80, 48)
        text = image.text["parameters"]
    assert "Negative prompt: blurry" in text and "Sampler: DPM++ 2M Karras" in text and "Seed: 5" in text
    again = tmp_path / "b.png"
    assert run("generate", "--from-png", out, "-o", again, "-q").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_json_reports_paths_seeds_and_timings(tiny_dir, tmp_path):
    result = run(
        "generate",
        "a cat",
        "-m",
        tiny_dir("vega"),
        "-o",
        tmp_path / "c.png",
        "--seed",
        9,
        "--samples",
        2,
        "--steps",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [i["seed"] for i in report["images"]] == [9, 10]
    assert [i["path"] for i in report["images"]] == [str(tmp_path / "c-0.png"), str(tmp_path / "c-1.png")]
    assert all((tmp_path / f"c-{i}.png").is_file() for i in range(2))
    assert report["timings"]["total"] > 0 and "denoise" in report["timings"]


def test_img2img_and_inpaint_from_the_cli(tiny_dir, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (0, 0, 32, 64))
    m.save(mask)
    out = tmp_path / "inpainted.png"
    result = run("generate", "a cat", "-m", tiny_dir("vega"), "-i", init, "--mask", mask, "-o", out, "--steps", 2, "-q")
    assert result.exit_code == 0, result.output
    pixels = np.asarray(Image.open(out))
    assert (pixels[:, 32:] == (200, 30, 30)).all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "x", "-W", "100"], "nearest valid"),
        (["generate", "x", "--scheduler", "bogus"], "unknown scheduler"),
        (["generate", "x", "-o", "out.gif"], "unsupported output format"),
        (["generate", "x", "--init-image", "missing.png"], "no such file"),
        (["generate"], "PROMPT"),
        (["init-random", "sdxl-turbo", "x"], "unknown preset"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(tiny_dir, tmp_path, args, message):
    args = [*args, "-m", str(tiny_dir("vega"))] if args[0] == "generate" else args
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_real_process_refuses_pickle_without_traceback(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    proc = subprocess.run(
        [sys.executable, "-m", "ssdxl.cli.main", "generate", "x", "-m", str(ckpt)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "allow-pickle" in proc.stderr and "Traceback" not in proc.stderr


def test_models_lists_presets_with_exact_counts():
    result = run("models")
    assert result.exit_code == 0
    assert "2,567,463,684" in result.stdout and "745,225,604" in result.stdout


def test_init_random_and_convert(tmp_path):
    folder = tmp_path / "tiny"
    assert run("init-random", "ssd-1b", folder, "--scale", "tiny").exit_code == 0
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer_2").is_dir()
    assert run("init-random", "ssd-1b", folder, "--scale", "tiny").exit_code == 2  # never overwrites
    single = tmp_path / "tiny.safetensors"
    assert run("convert", folder, single).exit_code == 0 and single.stat().st_size > 0


def test_schedulers_lists_segmind_and_a1111_names():
    names = run("schedulers").stdout.splitlines()
    assert {"Euler a", "DPM++ 2M Karras", "DPM2 a Karras", "UniPC", "LCM"} <= set(names)


def test_eval_adherence_prints_a_table_and_writes_json(tiny_dir, tmp_path):
    report = tmp_path / "adherence.json"
    result = run(
        "eval", "adherence", "-m", tiny_dir("vega"), "--singles", 2, "--pairs", 1, "--steps", 1, "--json", report
    )
    assert result.exit_code == 0, result.output
    assert "background" in result.stdout and "relation" in result.stdout and "fid" in result.stdout
    data = json.loads(report.read_text())
    assert data["counts"]["all"] == 3 and 0.0 <= data["accuracy"]["all"] <= 1.0


def test_tiled_vae_decodes_images_larger_than_a_tile(tiny_dir, tmp_path):
    out = tmp_path / "big.png"
    result = run(
        "generate", "a cat", "-m", tiny_dir("vega"), "-W", 160, "-H", 128, "--steps", 1, "--tiled-vae", "-o", out, "-q"
    )  # the tiny VAE's tile is 64 pixels
    assert result.exit_code == 0, result.output
    pixels = np.asarray(Image.open(out))
    assert pixels.shape == (128, 160, 3) and pixels.std() > 0
