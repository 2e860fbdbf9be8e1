"""``ssdxl finetune`` and ``ssdxl distill lcm`` on the built-in ``shapes`` model: each mode trains and lowers
the loss, resume is exact, the files load in ssdxl and in stock diffusers and change the image, and bad
data or settings are one-line errors (exit 2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.data.shapes import ShapesWorld
from ssdxl.finetune.config import FinetuneConfig, run_folder
from ssdxl.finetune.data import training_batches
from ssdxl.finetune.loop import finetune
from ssdxl.finetune.objective import DenoisingObjective
from ssdxl.models.loading import load_components
from ssdxl.training.denoiser import DeviceTextConditioner

runner = CliRunner()
FAST = {"batch_size": 4, "checkpoint_every": 3, "log_every": 3, "mixed_precision": "no", "threads": 2}
PROMPT = "a large red circle in the centre on a black background"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Eight shapes-world images with .txt captions (the image-folder format)."""
    folder = tmp_path_factory.mktemp("photos")
    ShapesWorld(seed=3).export(folder, 8)
    return folder


def held_loss(cfg: FinetuneConfig, parts, caption=str) -> float:
    """The mode's own loss on the first batches of the data, with fixed noise: lower = fits the data better."""
    text = DeviceTextConditioner(parts, torch.device("cpu"))
    objective = DenoisingObjective(parts, text, torch.device("cpu"), trains_text=False, snr_gamma=0.0,
                                   caption_dropout=0.0, caption=caption)  # fmt: skip
    batches = training_batches(cfg, parts)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return float(np.mean([objective(next(batches))["total"].item() for _ in range(4)]))


def image(pipe, prompt=PROMPT, steps=8):
    return pipe(prompt, num_inference_steps=steps, width=64, height=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip


def test_lora_lowers_the_loss_and_loads_in_diffusers_and_ssdxl(photos, tmp_path):
    out = tmp_path / "style.safetensors"
    cfg = FinetuneConfig(mode="lora", model="shapes", out=str(out), data=str(photos), steps=12, lr=3e-3, rank=4,
                         **FAST)  # fmt: skip
    before = held_loss(cfg, load_components("shapes"))
    assert finetune(cfg) == out
    with safe_open(out, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)
    assert meta["ssdxl.base_model"] == "shapes" and meta["ss_network_dim"] == "4"

    pipe = load_components("shapes").diffusers_pipeline()
    base = image(pipe)
    pipe.load_lora_weights(str(tmp_path), weight_name=out.name)
    tuned = image(pipe)
    assert np.abs(tuned - base).max() > 0.02
    fused = load_components("shapes")
    pipe_unet = pipe.unet  # diffusers' loaded copy of the LoRA: the loss with it is the trained loss
    after = held_loss(cfg, dataclasses.replace(fused, unet=pipe_unet))
    assert after < before

    from ssdxl.sampling.engine import Engine
    from ssdxl.sampling.request import GenerationRequest

    engine = Engine.load("shapes", device="cpu", dtype="float32", lora_dirs=(tmp_path,))
    settings = {"steps": 8, "seed": 0, "width": 64, "height": 64}
    plain = np.asarray(engine.generate(GenerationRequest(PROMPT, **settings)).images[0].image, np.float32)
    styled = engine.generate(GenerationRequest(PROMPT + " <lora:style:1>", **settings)).images[0].image
    assert np.abs(np.asarray(styled, np.float32) - plain).max() > 5


def test_resume_is_exact_and_kohya_equals_diffusers(photos, tmp_path):
    common = {"mode": "lora", "model": "shapes", "data": str(photos), "rank": 4, "lr": 1e-3, "flip": 0.5,
              "crop": "random", "train_text_encoder": True, **FAST}  # fmt: skip
    whole = tmp_path / "whole.safetensors"
    finetune(FinetuneConfig(out=str(whole), steps=6, **common))
    part = tmp_path / "part.safetensors"
    finetune(FinetuneConfig(out=str(part), steps=3, **common))
    resumed = FinetuneConfig.load(run_folder(part))
    resumed.steps = 6
    finetune(resumed, resume=True)
    a, b = load_file(whole), load_file(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("text_encoder_2.") for k in a)

    kohya = tmp_path / "kohya.safetensors"
    finetune(FinetuneConfig(out=str(kohya), steps=6, lora_format="kohya", **common))
    assert any(k.startswith("lora_te2_") for k in load_file(kohya))
    pipe = load_components("shapes").diffusers_pipeline()
    images = []
    for file in (whole, kohya):
        pipe.load_lora_weights(str(tmp_path), weight_name=file.name)
        images.append(image(pipe, steps=4))
        pipe.unload_lora_weights()
    assert np.abs(images[0] - images[1]).max() < 1e-4


def test_embedding_learns_a_word_that_loads_in_ssdxl_and_diffusers(photos, tmp_path):
    out = tmp_path / "sparkle.safetensors"
    cfg = FinetuneConfig(mode="embedding", model="shapes", out=str(out), data=str(photos), steps=9, vectors=2,
                         replace="circle", **FAST)  # fmt: skip
    finetune(cfg)
    vectors = load_file(out)
    assert vectors["clip_l"].shape[0] == 2 and vectors["clip_g"].shape[0] == 2

    pipe = load_components("shapes").diffusers_pipeline()
    base = image(pipe, "a large red sparkle in the centre on a black background")
    for key, encoder, tokenizer in (("clip_l", pipe.text_encoder, pipe.tokenizer),
                                    ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)):  # fmt: skip
        pipe.load_textual_inversion(vectors[key], token="sparkle", text_encoder=encoder, tokenizer=tokenizer)
    assert np.abs(image(pipe, "a large red sparkle in the centre on a black background") - base).max() > 0.02

    from ssdxl.sampling.engine import Engine
    from ssdxl.sampling.request import GenerationRequest

    engine = Engine.load("shapes", device="cpu", dtype="float32", embedding_dirs=(tmp_path,))
    settings = {"steps": 4, "seed": 0, "width": 64, "height": 64}
    result = engine.generate(GenerationRequest("a large red sparkle on a black background", **settings))
    assert result.images[0].image.size == (64, 64)


def test_full_writes_a_model_folder_and_lcm_a_few_step_lora(photos, tmp_path):
    folder = tmp_path / "tuned"
    cfg = FinetuneConfig(mode="full", model="shapes", out=str(folder), data=str(photos), steps=8, lr=1e-5,
                         ema_decay=0.0, save_dtype="float32", **FAST)  # fmt: skip
    finetune(cfg)
    tuned, base = load_components(folder), load_components("shapes")
    assert tuned.name == base.name and (folder / "model_index.json").is_file()
    assert held_loss(cfg, tuned) < held_loss(cfg, base)

    rt = tmp_path / "shapes-rt.safetensors"
    result = cli("distill", "lcm", "--teacher", "shapes", "-o", rt, "--steps", 4, "--batch-size", 4, "--rank", 4,
                 "--checkpoint-every", 2, "--mixed-precision", "no", "--validation-prompt", PROMPT)  # fmt: skip
    assert result.exit_code == 0, result.output
    from ssdxl.adapters.lora import inspect_lora

    assert inspect_lora(rt).few_step == "LCM"
    wrong = cli("finetune", "lora", "-o", rt, "--resume")
    assert wrong.exit_code == 2 and "ssdxl distill lcm --resume" in wrong.output
    assert (tmp_path / "shapes-rt.run" / "validation" / "step_000004.png").is_file()
    part = tmp_path / "part-rt.safetensors"
    args = ("distill", "lcm", "--teacher", "shapes", "-o", part, "--batch-size", 4, "--rank", 4,
            "--checkpoint-every", 2, "--mixed-precision", "no")  # fmt: skip
    assert cli(*args, "--steps", 2).exit_code == 0
    assert cli("distill", "lcm", "-o", part, "--resume", "--steps", 4).exit_code == 0
    a, b = load_file(rt), load_file(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dreambooth_draws_its_class_images_and_trains_the_subject(photos, tmp_path):
    out = tmp_path / "subject.safetensors"
    result = cli("finetune", "dreambooth", "--model", "shapes", "--data", photos, "--instance-prompt", "a sks shape",
                 "--class-prompt", "a shape", "--num-class-images", 4, "-o", out, "--steps", 3, "--batch-size", 2,
                 "--mixed-precision", "no", "--rank", 4)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "subject.run" / "class-images").glob("*.png"))) == 4
    assert out.is_file()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("empty", ("lora",), "has no images"),
        ("uncaptioned", ("lora",), "no caption file"),
        ("tiny", ("lora",), "8x8, trains at 64x64"),
        ("photos", ("dreambooth",), "--instance-prompt"),
        ("photos", ("lora", "--rank", 0), "--rank must be at least 1"),
        ("photos", ("full",), "folder"),
        ("photos", ("lora", "--resume", "--rank", 2), "--resume keeps the run's settings"),
        ("photos", ("lora", "--model", "sdxl-refiner-nope"), "sdxl-refiner-nope"),
    ],
)
def test_bad_data_and_settings_are_one_line_errors(setup, args, message, photos, tmp_path):
    data = {"photos": photos, "empty": tmp_path / "empty", "uncaptioned": tmp_path / "bare", "tiny": tmp_path / "s"}
    for name in ("empty", "uncaptioned", "tiny"):
        data[name].mkdir()
    ShapesWorld(seed=1).sample(0).image.save(data["uncaptioned"] / "a.png")
    ShapesWorld(seed=1).sample(0).image.resize((8, 8)).save(data["tiny"] / "a.png")
    (data["tiny"] / "a.txt").write_text("a circle")
    mode, *rest = args
    model = [] if "--model" in rest else ["--model", "shapes"]
    out = tmp_path / ("out" if mode == "full" else "out.safetensors")
    if mode == "full":
        out = tmp_path / "out.safetensors"  # a LoRA-style name for a model folder
    result = cli("finetune", mode, *model, "--data", data[setup], "-o", out, "--steps", 1, *rest)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


def test_a_refiner_cannot_be_fine_tuned(tiny_dir, photos, tmp_path):
    result = cli("finetune", "lora", "--model", tiny_dir("sdxl-refiner"), "--data", photos, "-o",
                 tmp_path / "r.safetensors", "--steps", 1)  # fmt: skip
    assert result.exit_code == 2 and "refiner" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r.run").exists()


def test_a_kohya_lora_of_a_vega_layout_loads_like_its_diffusers_twin(tiny_dir, photos, tmp_path):
    """SGM block names depend on the layout: a Vega-style UNet's kohya file must land on the same layers."""
    from ssdxl.sampling.engine import Engine
    from ssdxl.sampling.request import GenerationRequest

    common = {"mode": "lora", "model": str(tiny_dir("vega")), "data": str(photos), "rank": 2, "lr": 1e-2,
              "resolution": 64, "steps": 2, "allow_upscale": True, **FAST}  # fmt: skip
    for fmt in ("diffusers", "kohya"):
        finetune(FinetuneConfig(out=str(tmp_path / f"{fmt}.safetensors"), lora_format=fmt, **common))
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", lora_dirs=(tmp_path,))
    settings = {"steps": 3, "seed": 0, "width": 64, "height": 64}
    plain, a, b = (
        np.asarray(engine.generate(GenerationRequest(f"a red circle{tag}", **settings)).images[0].image, np.float32)
        for tag in ("", " <lora:diffusers:1>", " <lora:kohya:1>")
    )
    assert np.abs(a - plain).max() > 1 and np.abs(a - b).max() <= 1


def test_a_lora_keeps_its_prior_with_captioned_regularisation_images(photos, tmp_path):
    out = tmp_path / "kept.safetensors"
    cfg = FinetuneConfig(mode="lora", model="shapes", out=str(out), data=str(photos), class_data=str(photos),
                         steps=3, rank=4, **FAST)  # fmt: skip
    assert cfg.prior
    finetune(cfg)
    logged = [line for line in (tmp_path / "kept.run" / "log.jsonl").read_text().splitlines() if '"prior"' in line]
    assert logged and not (tmp_path / "kept.run" / "class-images").exists()


def test_a_model_of_the_users_needs_its_own_data(tiny_dir, tmp_path):
    result = cli("finetune", "lora", "--model", tiny_dir("vega"), "-o", tmp_path / "v.safetensors", "--steps", 1)
    assert result.exit_code == 2 and "--data" in result.output and len(result.output.strip().splitlines()) == 1
