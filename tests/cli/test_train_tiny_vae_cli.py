"""``ssdxl train tiny-vae``: a few steps distilled from the built-in model's VAE, exact resume, the folder
``--tiny-vae`` loads; ``ssdxl train`` itself still takes its own options."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.training.progress import Progress

runner = CliRunner()
TINY = ("--model", "shapes", "--batch-size", 2, "--width", 8, "--depth", 1, "--checkpoint-every", 2, "--threads", 1)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_resume_after_a_crash_equals_an_uninterrupted_run_and_the_result_decodes(tmp_path, monkeypatch):
    straight, part = tmp_path / "straight", tmp_path / "part"
    result = run("train", "tiny-vae", "--out", straight, "--steps", 4, *TINY)
    assert result.exit_code == 0, result.output
    with monkeypatch.context() as m:  # killed at step 3, after the checkpoint of step 2
        step = Progress.step

        def crash(self, at, loss, **metrics):
            if at == 3:
                raise KeyboardInterrupt
            step(self, at, loss, **metrics)

        m.setattr(Progress, "step", crash)
        crashed = run("train", "tiny-vae", "--out", part, "--steps", 4, *TINY)
        assert crashed.exit_code == 2 and "interrupted" in crashed.output
    again = run("train", "tiny-vae", "--out", part, "--steps", 4, *TINY)
    assert again.exit_code == 2 and "already holds this run" in again.output
    changed = run("train", "tiny-vae", "--out", part, "--resume", "--width", 16)
    assert changed.exit_code == 2 and "drop --width" in changed.output
    result = run("train", "tiny-vae", "--out", part, "--resume")
    assert result.exit_code == 0, result.output

    a, b = (load_file(folder / "diffusion_pytorch_model.safetensors") for folder in (straight, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    checkpoints = [torch.load(tmp_path / f"{f.name}.run" / "checkpoints" / "tiny-vae.pt", weights_only=False)
                   for f in (straight, part)]  # fmt: skip
    assert checkpoints[0]["step"] == checkpoints[1]["step"] == 4
    assert all(torch.equal(v, checkpoints[1]["model"][k]) for k, v in checkpoints[0]["model"].items())

    info = json.loads((part / "ssdxl.json").read_text())
    assert info["latent_space"] == "VAE ÷4, 4 latent channels, latent scale 0.34595"
    metrics = json.loads((part / "metrics.json").read_text())
    assert {"decoder_psnr_db", "linear_preview_psnr_db", "encoder_psnr_db"} <= metrics.keys()

    out = tmp_path / "fast.png"
    result = run("generate", "a red circle", "--fast-decode", "--tiny-vae", part, "--steps", 2, "-o", out, "-q")
    assert result.exit_code == 0, result.output


def test_train_keeps_its_own_options_beside_the_subcommand(tmp_path):
    assert "tiny-vae" in run("train", "--help").output
    assert "--encoder-weight" in run("train", "tiny-vae", "--help").output
    result = run("train", "--out", tmp_path, "--resume")
    assert result.exit_code == 2 and "not a training run folder" in result.output
    result = run("train", "tiny-vae", "--out", tmp_path / "x", "--model", "shapes", "--resume")
    assert result.exit_code == 2 and "drop --model" in result.output
