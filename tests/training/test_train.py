"""``ssdxl train`` on the tiny architecture: a few steps of each stage, a diffusers folder that the
stock pipeline samples from, exact resume after a crash, and the conditioning SDXL expects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from ssdxl.errors import UserError
from ssdxl.training import TrainConfig, train
from ssdxl.training.progress import Progress

# One thread: two stall each other whenever the shared test machine is busy (4x slower here).
TINY = {"arch": "tiny", "vae_steps": 4, "steps": 4, "batch_size": 4, "checkpoint_every": 2, "threads": 1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    train(TrainConfig(out=str(run), **TINY))
    return run


def test_writes_a_diffusers_folder_that_stock_diffusers_samples(finished_run: Path) -> None:
    from diffusers import StableDiffusionXLPipeline
    from safetensors import safe_open

    folder = finished_run / "model"
    info = json.loads((folder / "ssdxl.json").read_text())
    assert info["defaults"] == {"width": 32, "height": 32, "steps": 4, "guidance_scale": 4.5, "scheduler": "Euler"}
    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the latents at the end of stage 1
    assert pipe.text_encoder.get_input_embeddings().num_embeddings == 49408  # the real CLIP vocabulary
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle on a black background", num_inference_steps=2, guidance_scale=4.0).images[0]
    assert image.size == (32, 32)  # the UNet's sample_size x the VAE's downsampling

    metrics = json.loads((finished_run / "vae" / "metrics.json").read_text())
    assert metrics["psnr_db"] > 0
    assert sorted(p.name for p in (finished_run / "previews").iterdir()) == ["step_000002.png", "step_000004.png"]
    stages = {json.loads(line)["stage"] for line in (finished_run / "log.jsonl").read_text().splitlines()}
    assert stages == {"autoencoder", "denoiser"}


def _crash_at(monkeypatch: pytest.MonkeyPatch, stage: str, at: int) -> None:
    """Make the run die (like a kill) just before it records step ``at`` of ``stage``."""
    original = Progress.step

    def step(self: Progress, step: int, loss: float, **metrics: float) -> None:
        if self.stage == stage and step == at:
            raise KeyboardInterrupt
        original(self, step, loss, **metrics)

    monkeypatch.setattr(Progress, "step", step)


def test_resume_continues_exactly(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ssdxl.cli.train import train as train_command

    run = tmp_path / "run"
    options = dict(TINY)
    with monkeypatch.context() as m:
        _crash_at(m, "autoencoder", 3)
        with pytest.raises(KeyboardInterrupt):
            train_command(out=run, **options)
    with pytest.raises(UserError, match="already holds a training run"):
        train_command(out=run, **options)
    with monkeypatch.context() as m:
        _crash_at(m, "denoiser", 3)
        with pytest.raises(KeyboardInterrupt):
            train_command(out=run, resume=True)
    assert json.loads((run / "config.json").read_text())["steps"] == 4
    train_command(out=run, resume=True)

    for stage in ("autoencoder", "denoiser"):
        resumed = torch.load(run / "checkpoints" / f"{stage}.pt", weights_only=False)
        straight = torch.load(finished_run / "checkpoints" / f"{stage}.pt", weights_only=False)
        assert resumed["step"] == straight["step"] == 4
        assert resumed["data"] == straight["data"]
        weights = ("model",) if stage == "autoencoder" else ("models", "ema")
        for key in weights:
            a, b = _flatten(resumed[key]), _flatten(straight[key])
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), f"{stage} {key} differ after resume"


def _flatten(state: dict) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in _flatten(value).items()}
        else:
            out[key] = value
    return out


def test_resume_refuses_changed_settings(tmp_path: Path) -> None:
    from ssdxl.cli.train import train as train_command

    with pytest.raises(UserError, match="drop --batch-size"):
        train_command(out=tmp_path, resume=True, batch_size=8)
    with pytest.raises(UserError, match="not a training run folder"):
        train_command(out=tmp_path, resume=True)


def test_bad_data_and_architecture(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown architecture"):
        train(TrainConfig(out=str(tmp_path / "a"), arch="huge"))
    with pytest.raises(UserError, match="--data must be"):
        train(TrainConfig(out=str(tmp_path / "b"), data=str(tmp_path / "missing"), **TINY))
    assert not (tmp_path / "b").exists()


def test_conditioning_shapes_and_caption_dropout() -> None:
    from ssdxl.models.components import build_components
    from ssdxl.training.config import architecture
    from ssdxl.training.denoiser import TextConditioner, caption_keep_mask

    parts = build_components(architecture("tiny")[0])
    text = TextConditioner(parts)
    captions = ["a red circle", "a blue square above a green star", "", "a white cross on the left"]
    time_ids = torch.tensor([[32, 32, 0, 0, 32, 32], [48, 80, 0, 2, 32, 48]] * 2, dtype=torch.float32)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        prompt_embeds, added = text.conditioning(captions, time_ids, keep)

    assert prompt_embeds.shape == (4, 77, parts.unet.config.cross_attention_dim)  # hidden 32 + hidden 32
    assert added["text_embeds"].shape == (4, parts.text_encoder_2.config.projection_dim)
    assert added["time_ids"].shape == (4, 6)
    for row in (1, 3):  # dropped: exactly what the pipeline feeds for an empty negative prompt
        assert not prompt_embeds[row].any() and not added["text_embeds"][row].any()
    for row in (0, 2):
        assert prompt_embeds[row].abs().sum() > 0 and added["text_embeds"][row].abs().sum() > 0
    # the UNet accepts them: the text_time projection input is pooled + 6 time ids
    with torch.no_grad():
        out = parts.unet(
            torch.randn(4, 4, 8, 8), torch.tensor([1, 10, 100, 999]), prompt_embeds, added_cond_kwargs=added
        )
    assert out.sample.shape == (4, 4, 8, 8)

    torch.manual_seed(0)
    rate = caption_keep_mask(20000, 0.1).mean().item()
    assert 0.89 < rate < 0.91


def test_buckets_time_ids_and_resumable_batches() -> None:
    from ssdxl.data.shapes import ShapesWorld
    from ssdxl.training.data import BucketBatches, fit_to_bucket

    buckets = [(32, 32), (48, 32)]
    image, time_ids = fit_to_bucket(Image.new("RGB", (80, 48)), buckets)
    assert image.size == (48, 32)
    assert time_ids == [48, 80, 0, 2, 32, 48]  # original (h, w), crop (top, left), target (h, w)
    image, time_ids = fit_to_bucket(Image.new("RGB", (32, 32)), buckets)
    assert time_ids == [32, 32, 0, 0, 32, 32]

    stream = BucketBatches(ShapesWorld(seed=1), buckets, batch_size=4, seed=0)
    for _ in range(5):
        batch = next(stream)
        assert batch.pixels.shape[0] == len(batch.captions) == len(batch.time_ids) == 4
        h, w = batch.pixels.shape[-2:]
        assert (w, h) in buckets and (batch.time_ids[:, 4:] == torch.tensor([h, w])).all()
    state = stream.state_dict()
    expected = next(stream)
    again = BucketBatches(ShapesWorld(seed=1), buckets, batch_size=4, seed=0)
    again.load_state_dict(state)
    got = next(again)
    assert got.captions == expected.captions and torch.equal(got.pixels, expected.pixels)


def test_contrast_hinge_charges_only_a_caption_that_fits_no_better_than_its_contrast() -> None:
    from ssdxl.training.denoiser import contrast_hinge

    cfg = TrainConfig(out="unused", contrast_margin=0.2)
    fit, wrong = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([2.0, 1.1, 0.5])
    assert torch.allclose(contrast_hinge(fit, wrong, cfg), torch.tensor([0.0, 0.1, 0.7]))


def test_contrast_loss_reads_the_batch_contrasts() -> None:
    from ssdxl.data.shapes import ShapesWorld
    from ssdxl.models.components import build_components
    from ssdxl.training.config import architecture
    from ssdxl.training.data import BucketBatches
    from ssdxl.training.denoiser import NoiseSchedule, TextConditioner, denoising_loss

    preset, buckets = architecture("tiny")
    parts = build_components(preset, seed=0)
    batch = next(BucketBatches(ShapesWorld(seed=1, two_object_fraction=1.0), buckets, batch_size=8, seed=0))
    assert batch.contrasts is not None
    assert all(c not in (None, cap) for c, cap in zip(batch.contrasts, batch.captions, strict=True))
    text = TextConditioner(parts)
    noise = NoiseSchedule.from_config(parts.scheduler_config)
    losses = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)  # same latents, noise, timesteps and dropout
        cfg = TrainConfig(out="unused", arch="tiny", contrast_weight=weight, caption_dropout=0.0, bf16=False)
        losses.append(denoising_loss(cfg, batch, parts.vae, parts.unet, text, noise).item())
    # An untrained model fits the true and the reversed caption about equally, so the hinge is paid.
    assert losses[1] > losses[0]


def test_evaluation_set_keeps_every_image() -> None:
    from ssdxl.data.shapes import ShapesWorld
    from ssdxl.training.data import fixed_batches

    batches = fixed_batches(ShapesWorld(seed=1), [(32, 32), (48, 32)], count=10, batch_size=4)
    assert sum(len(b.captions) for b in batches) == 10


def test_folder_source_keeps_every_image(tmp_path: Path) -> None:
    from ssdxl.data.shapes import ShapesWorld
    from ssdxl.training.data import BucketBatches, open_source

    ShapesWorld(seed=2).export(tmp_path, 10)
    folder = open_source(str(tmp_path), seed=0)
    stream = BucketBatches(folder, [(32, 32), (48, 32)], batch_size=4, seed=0)
    seen = []
    while stream.pool == 0:
        seen += next(stream).captions
    assert len(seen) == stream.pool_size  # a pool spans whole epochs of the folder, none dropped
    assert sorted(set(seen)) == sorted({s.caption for s in folder})


def test_copying_a_run_keeps_it_resumable(finished_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    cfg = TrainConfig.load(run)
    assert cfg.out == str(run) and cfg.arch == "tiny"


def test_vae_from_an_earlier_run_skips_stage_one(finished_run: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    run = tmp_path / "run"
    train(TrainConfig(out=str(run), vae=str(finished_run / "vae"), **{**TINY, "steps": 2}))
    stages = {json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()}
    assert stages == {"denoiser"}  # no autoencoder step was taken
    adopted, earlier = (
        AutoencoderKL.from_pretrained(run / "model" / "vae"),
        AutoencoderKL.from_pretrained(finished_run / "vae"),
    )
    assert adopted.config.scaling_factor == earlier.config.scaling_factor
    assert all(torch.equal(a.half(), b.half()) for a, b in zip(adopted.parameters(), earlier.parameters(), strict=True))
    assert json.loads((run / "vae" / "metrics.json").read_text()) == json.loads(
        (finished_run / "vae" / "metrics.json").read_text()
    )


def test_vae_must_fit_the_architecture(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a diffusers autoencoder folder"):
        train(TrainConfig(out=str(tmp_path / "a"), vae=str(tmp_path), **TINY))
    wrong = tmp_path / "wrong"
    shutil.copytree(finished_run / "vae", wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(UserError, match="latent_channels is 8"):
        train(TrainConfig(out=str(tmp_path / "b"), vae=str(wrong), **TINY))


def test_init_fine_tunes_a_trained_model(finished_run: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from ssdxl.models.components import build_components
    from ssdxl.models.loading import load_components
    from ssdxl.training.config import architecture
    from ssdxl.training.run import start_from

    trained = load_components(finished_run / "model")
    parts = build_components(architecture("tiny")[0], seed=7)
    vae = start_from(parts, str(finished_run / "model"))
    for slot in ("unet", "text_encoder", "text_encoder_2"):
        got, want = getattr(parts, slot).state_dict(), getattr(trained, slot).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), slot
    # The latent scale travels with the weights: without it the denoiser sees wrongly scaled latents.
    assert vae.config.scaling_factor == trained.vae.config.scaling_factor != 1.0

    run = tmp_path / "run"
    train(TrainConfig(out=str(run), init=str(finished_run / "model"), **{**TINY, "steps": 2}))
    stages = {json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()}
    assert stages == {"denoiser"}  # the model's autoencoder is stage 1
    written = AutoencoderKL.from_pretrained(run / "vae")
    assert written.config.scaling_factor == trained.vae.config.scaling_factor


def test_init_must_fit_the_architecture(finished_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="its text_encoder does not match"):
        train(TrainConfig(out=str(tmp_path / "a"), init="shapes", **TINY))
    with pytest.raises(UserError, match="drop --vae"):
        train(TrainConfig(out=str(tmp_path / "b"), init="shapes", vae=str(finished_run / "vae"), **TINY))


def test_zero_init_starts_every_residual_block_as_the_identity() -> None:
    from diffusers import UNet2DConditionModel
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from ssdxl.training.config import architecture
    from ssdxl.training.denoiser import zero_init_residual_branches

    preset, _ = architecture("tiny")
    unet = UNet2DConditionModel(**preset.unet)
    zero_init_residual_branches(unet)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module in unet.modules():
        plain_resnet = isinstance(module, ResnetBlock2D) and module.conv_shortcut is None
        if plain_resnet or isinstance(module, Transformer2DModel):
            module.register_forward_hook(
                lambda _m, args, out: seen.append((args[0], out[0] if isinstance(out, tuple) else out))
            )
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    conditions = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, config.cross_attention_dim), added_cond_kwargs=conditions)
    assert len(seen) >= 6
    assert all(torch.allclose(inp, out) for inp, out in seen)


def test_init_grows_a_shallower_model_into_a_deeper_architecture(finished_run: Path, tmp_path: Path) -> None:
    """tiny -> tiny-xl as shapes -> shapes-xl: the grown UNet computes exactly what the trained one did, and stage 1
    teaches a VAE that downsamples twice as much the trained model's latent space (its scale included)."""
    from diffusers import AutoencoderKL

    from ssdxl.models.components import build_components
    from ssdxl.models.loading import load_components
    from ssdxl.training.config import architecture
    from ssdxl.training.run import start_from

    trained = load_components(finished_run / "model")
    parts = build_components(architecture("tiny-xl")[0], seed=7)
    start_from(parts, str(finished_run / "model"))
    assert sum(p.numel() for p in parts.unet.parameters()) > sum(p.numel() for p in trained.unet.parameters())
    config = trained.unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    inputs = (torch.randn(2, 4, 8, 8), 500, torch.randn(2, 77, config.cross_attention_dim))
    conditions = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.randn(2, 6)}
    with torch.no_grad():
        want = trained.unet.float()(*inputs, added_cond_kwargs=conditions).sample
        got = parts.unet(*inputs, added_cond_kwargs=conditions).sample
    assert torch.equal(got, want)

    run = tmp_path / "grown"
    train(TrainConfig(out=str(run), init=str(finished_run / "model"), **{**TINY, "arch": "tiny-xl", "steps": 2},
                      train_text=False))  # fmt: skip
    stages = [json.loads(line)["stage"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert "autoencoder" in stages and "denoiser" in stages
    vae = AutoencoderKL.from_pretrained(run / "vae")
    assert len(vae.config.block_out_channels) == 4 and vae.config.scaling_factor == trained.vae.config.scaling_factor
    metrics = json.loads((run / "vae" / "metrics.json").read_text())
    assert set(metrics) >= {"psnr_db", "teacher_latent_psnr_db"}
    grown = load_components(run / "model")  # frozen text towers come out as they went in
    got, want = grown.text_encoder.state_dict(), trained.text_encoder.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    image = grown.diffusers_pipeline()("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_growing_keeps_every_width() -> None:
    from diffusers import UNet2DConditionModel

    from ssdxl.training.config import architecture
    from ssdxl.training.grow import grow_unet

    config = dict(architecture("tiny-xl")[0].unet)
    wider = UNet2DConditionModel(**{**config, "block_out_channels": [32, 96]})
    with pytest.raises(UserError, match="only transformer depth may grow"):
        grow_unet(wider, UNet2DConditionModel(**architecture("tiny")[0].unet))
    with pytest.raises(UserError, match="has no"):  # shallower than the trained one: nothing to grow
        grow_unet(UNet2DConditionModel(**architecture("tiny")[0].unet), UNet2DConditionModel(**config))
