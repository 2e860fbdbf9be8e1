"""The CLI's adapter options as a user types them: files, folders, prompt tags, listings, --from-png."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ssdxl.cli.main import app

runner = CliRunner()
FAST = ["--width", "64", "--height", "64", "--steps", "2", "--seed", "3", "--quiet", "--dtype", "float32"]


def generate(*args: str):
    return runner.invoke(app, ["generate", *args, *FAST])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_lora_by_file_by_tag_and_from_png(tiny_dir, adapter_dirs, tmp_path):
    model, loras = str(tiny_dir("vega")), adapter_dirs[0]
    by_file = tmp_path / "file.png"
    assert (
        generate(
            "a red circle", "-m", model, "--lora", f"{loras / 'style.safetensors'}:0.7", "-o", str(by_file)
        ).exit_code
        == 0
    )
    by_tag = tmp_path / "tag.png"
    result = generate("a red circle <lora:style:0.7>", "-m", model, "--lora-dir", str(loras), "-o", str(by_tag))
    assert result.exit_code == 0, result.output
    assert np.array_equal(pixels(by_file), pixels(by_tag))
    info = Image.open(by_tag).text["parameters"]
    assert "<lora:style:0.7>" in info and 'Lora hashes: "style: ' in info
    again = tmp_path / "again.png"
    assert runner.invoke(app, ["generate", "--from-png", str(by_tag), "-o", str(again), "--quiet"]).exit_code == 0
    assert np.array_equal(pixels(by_tag), pixels(again))


def test_from_png_refuses_a_changed_lora_file(tiny_dir, adapter_dirs, tmp_path):
    import shutil

    lora = tmp_path / "mine.safetensors"
    shutil.copy(adapter_dirs[0] / "style.safetensors", lora)
    out = tmp_path / "o.png"
    assert generate("x", "-m", str(tiny_dir("vega")), "--lora", str(lora), "-o", str(out)).exit_code == 0
    shutil.copy(adapter_dirs[0] / "kohya_style.safetensors", lora)
    result = runner.invoke(app, ["generate", "--from-png", str(out), "-o", str(tmp_path / "p.png"), "--quiet"])
    assert result.exit_code == 2 and "is not the file the image was made with" in result.output


def test_embedding_option_and_bad_input_are_one_line_exit_2(tiny_dir, adapter_dirs, tmp_path):
    model = str(tiny_dir("vega"))
    emb = adapter_dirs[1] / "mytok.safetensors"
    plain, with_emb = tmp_path / "p.png", tmp_path / "e.png"
    assert generate("a mytok", "-m", model, "-o", str(plain)).exit_code == 0
    assert generate("a mytok", "-m", model, "--embedding", str(emb), "-o", str(with_emb)).exit_code == 0
    assert not np.array_equal(pixels(plain), pixels(with_emb))
    for args, message in (
        (["a (cat:.)"], "is not a number"),
        (["x", "--lora", str(tmp_path / "nope.safetensors")], "not found"),
        (["x", "--lora", str(adapter_dirs[0] / "made_for_sdxl.safetensors"), "--lora", "ghost"], "unknown LoRA"),
        (["x", "--prompt-syntax", "bogus"], "unknown prompt syntax"),
    ):
        result = generate(*args, "-m", model, "-o", str(tmp_path / "bad.png"))
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_loras_and_embeddings_listings(adapter_dirs):
    result = runner.invoke(app, ["loras", "--lora-dir", str(adapter_dirs[0])])
    assert result.exit_code == 0
    assert "kohya_style" in result.output and "kohya" in result.output and "LCM" in result.output
    listed = json.loads(runner.invoke(app, ["loras", "--lora-dir", str(adapter_dirs[0]), "--json"]).output)
    style = next(row for row in listed if row["name"] == "style")
    assert style["rank"] == 4 and style["format"] == "diffusers" and style["parts"][0] == "unet"
    result = runner.invoke(app, ["embeddings", "--embedding-dir", str(adapter_dirs[1])])
    assert result.exit_code == 0 and "mytok" in result.output and "clip_g" in result.output
