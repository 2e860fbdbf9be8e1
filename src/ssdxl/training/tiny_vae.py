"""``ssdxl train tiny-vae``: distil a tiny VAE (diffusers ``AutoencoderTiny``, TAESD's network) from a model's own VAE,
read top to bottom: teacher, data, student, optimiser, resume, loop, checkpoint, measure.

The student reads and writes the UNet's latents (``scaling_factor`` 1.0, as TAESD / TAESDXL do), so it drops into
ssdxl's previews and ``--fast-decode`` and into diffusers' pipelines as their ``vae``. The decoder learns the teacher's
decoded pixels from the teacher's latents of an image, the encoder those latents. The teacher costs more than the
student, so it encodes and decodes ``scenes`` images once, up front, and every epoch reuses them in a new order (a
step's batch is a function of the seed and the step: resuming needs no data state).

<OUT>/                      the tiny VAE: config.json, diffusion_pytorch_model.safetensors, ssdxl.json (the latent
                            space it reads), metrics.json; rewritten at every checkpoint
<OUT>.run/config.json       the settings (``--resume`` reads them back)
<OUT>.run/log.jsonl         one JSON line per log interval / event
<OUT>.run/checkpoints/tiny-vae.pt   weights, optimiser, schedule, step
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny

from ssdxl.data.shapes import ShapesWorld
from ssdxl.errors import UserError
from ssdxl.models.components import Components
from ssdxl.models.families import LatentFormat
from ssdxl.models.loading import load_components
from ssdxl.models.tiny_vae import INFO_FILE, decode, encode
from ssdxl.models.vae import latent_space, to_unet, to_vae
from ssdxl.sampling.precision import DTYPES
from ssdxl.training.accelerator import MIXED_PRECISION, make_accelerator
from ssdxl.training.autoencoder import psnr_db
from ssdxl.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ssdxl.training.data import (
    Batch,
    IndexedSource,
    buckets_at,
    data_or_shapes,
    fixed_batches,
    open_source,
)
from ssdxl.training.optim import adamw, cosine_with_warmup, optimizer_step
from ssdxl.training.progress import Progress

STAGE = "tiny-vae"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
EVAL_IMAGES = 32  # held-out scenes (a folder: its first images) the finished run is measured on
TWO_OBJECT_FRACTION = 0.4  # shapes world: the built-in models' training mix
RESUMABLE = ("steps", "checkpoint_every", "log_every", "threads")  # what ``--resume`` may change


@dataclass
class TinyVAEConfig:
    """Every knob of a run. The defaults are the built-in models' recipe: a tiny VAE of 0.32 M parameters (0.64 MB
    in float16) for their ÷4 VAE, about 4 minutes on a busy 2-core CPU; TAESD itself is ``width=64, depth=3``."""

    out: str  # the tiny VAE's folder; the run's state goes beside it, in OUT.run/
    model: str = "shapes"  # the teacher: built-in name, folder, single file or repo id
    data: str | None = None  # 'shapes' or a folder of images (captions not needed); None: 'shapes' for built-ins
    steps: int = 1200
    batch_size: int = 8
    scenes: int = 768  # training images, taught once (a folder: at most all of its images)
    lr: float = 2e-3
    width: int = 32  # channels of every stage, encoder and decoder
    depth: int = 2  # blocks per stage (the decoder's last stage and the encoder's first have one)
    encoder_weight: float = 1.0  # the encoder's latent MSE beside the decoder's pixel L1 + MSE
    resolution: int | None = None  # training image side (default: the model's default width): resized and cropped
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 50
    threads: int = 2
    mixed_precision: str = "auto"  # as the fine-tuning runs: bf16 where the CPU or GPU has it
    save_dtype: str = "float16"

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def run_dir(self) -> Path:
        return self.out_path.with_name(self.out_path.name + ".run")

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, out: str | Path) -> TinyVAEConfig:
        path = cls(out=str(out)).run_dir / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"no tiny-VAE run to resume for {str(out)!r} (no {path}); drop --resume")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in json.loads(path.read_text()).items() if k in known}
        return cls(**{**values, "out": str(out)})

    def validate(self) -> None:
        for name in ("steps", "batch_size", "scenes", "width", "depth", "checkpoint_every", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0 or self.encoder_weight < 0:
            raise UserError("--lr must be above 0 and --encoder-weight at least 0")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.save_dtype not in DTYPES:
            raise UserError(f"unknown save dtype {self.save_dtype!r}; use float32, float16 or bfloat16")
        if self.out_path.suffix:
            raise UserError(f"--out {self.out!r}: a tiny VAE is a diffusers folder (give a name without a suffix)")


def train_tiny_vae(cfg: TinyVAEConfig, resume: bool = False) -> Path:
    """Distil ``cfg.model``'s VAE into a tiny one at ``cfg.out`` for ``cfg.steps`` steps; returns its folder."""
    cfg.validate()
    run, ckpt = cfg.run_dir, checkpoint_path(cfg.run_dir, STAGE)
    if ckpt.is_file() and not resume:
        raise UserError(f"{str(run)!r} already holds this run; pass --resume or choose another --out")
    if resume and not ckpt.is_file():
        raise UserError(f"no checkpoint to resume in {str(run)!r}; drop --resume")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, resume, ckpt)
    finally:
        torch.set_num_threads(threads)  # a library call should not leave the process re-tuned


def _train(cfg: TinyVAEConfig, resume: bool, ckpt: Path) -> Path:
    # Teacher and data, checked before anything is written.
    parts = load_components(cfg.model, dtype=torch.float32)
    source = _source(cfg, cfg.seed)
    buckets = _buckets(cfg, parts, source)
    if isinstance(source, ShapesWorld):
        source = source.at(buckets)  # drawn at the training sizes
    count = min(cfg.scenes, len(source)) if hasattr(source, "__len__") else cfg.scenes  # type: ignore[arg-type]
    acc = make_accelerator(cfg.mixed_precision, 1)
    device = acc.device
    teacher, fmt = parts.vae.to(device).eval().requires_grad_(False), parts.latent_format
    del parts  # the UNet and text towers: only the VAE teaches
    cfg.save()
    progress = Progress(STAGE, 0, cfg.steps, cfg.run_dir / "log.jsonl", cfg.log_every)

    # What the teacher makes of each training image, once: (pixels, its latents, their decode).
    started = time.perf_counter()
    taught = [teach(teacher, batch.pixels.to(device), acc) for batch in fixed_batches(source, buckets, count,
                                                                                     cfg.batch_size)]  # fmt: skip
    progress.note(scenes=count, batches=len(taught), teacher_seconds=round(time.perf_counter() - started, 1))

    # Student, optimiser, schedule.
    torch.manual_seed(cfg.seed)
    tiny = build_tiny_vae(teacher, cfg.width, cfg.depth).to(device)
    optimizer = adamw(tiny.named_parameters(), cfg.lr, weight_decay=0.0)
    schedule = cosine_with_warmup(optimizer, warmup=min(100, cfg.steps // 10), total=cfg.steps)

    # Resume.
    step, seconds = 0, 0.0
    if resume:
        state = load_checkpoint(ckpt)
        tiny.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, seconds = state["step"], state["seconds"]
        progress.bar.update(step)

    # Loop.
    tiny.train()
    clock = time.perf_counter() - seconds
    while step < cfg.steps:
        pixels_in, latents, target = taught[batch_at(cfg.seed, len(taught), step)]
        with acc.autocast():
            pixels = decode(tiny, latents).float()
            encoded = encode(tiny, pixels_in).float()
        decoder_loss = (pixels - target).abs().mean() + (pixels - target).pow(2).mean()
        encoder_loss = (encoded - latents).pow(2).mean()
        loss = decoder_loss + cfg.encoder_weight * encoder_loss
        optimizer_step(loss, tiny.parameters(), optimizer, schedule)
        step += 1
        progress.step(step, loss.item(), decoder=round(decoder_loss.item(), 5), encoder=round(encoder_loss.item(), 5),
                      lr=schedule.get_last_lr()[0])  # fmt: skip

        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            seconds = time.perf_counter() - clock
            state: dict[str, Any] = {"model": tiny.state_dict(), "optimizer": optimizer.state_dict(),
                                     "schedule": schedule.state_dict(), "step": step, "seconds": seconds}  # fmt: skip
            save_checkpoint(ckpt, state)
            save_tiny_vae(tiny, cfg.out_path, teacher, cfg, step)
            progress.note(step=step, checkpoint=str(ckpt), output=str(cfg.out_path), seconds=round(seconds, 1))
    progress.close()

    # Measure: on held-out scenes, the tiny decoder and the linear preview map against the teacher's decode.
    tiny.eval()
    held_out = fixed_batches(_source(cfg, cfg.seed + 1, "heldout", buckets), buckets, EVAL_IMAGES, batch_size=16)
    metrics = measure(tiny, teacher, fmt, held_out)
    (cfg.out_path / METRICS_FILE).write_text(json.dumps({"step": step, **metrics}, indent=2) + "\n")
    progress.note(step=step, **metrics)
    return cfg.out_path


@torch.no_grad()
def teach(teacher: AutoencoderKL, pixels: torch.Tensor, acc) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, the teacher's latents of them in the UNet's space, the teacher's decode of those latents)."""
    with acc.autocast():  # the teacher runs in the compute dtype too
        latents = to_unet(teacher, teacher.encode(pixels).latent_dist.mode()).float()
        decoded = teacher.decode(to_vae(teacher, latents)).sample.float().clamp(-1, 1)
    return pixels, latents, decoded


def batch_at(seed: int, batches: int, step: int) -> int:
    """Which taught batch step ``step`` trains on: every epoch visits them all, in its own seeded order."""
    epoch, within = divmod(step, batches)
    return int(np.random.default_rng((seed, 5, epoch)).permutation(batches)[within])


def build_tiny_vae(teacher: AutoencoderKL, width: int, depth: int) -> AutoencoderTiny:
    """An AutoencoderTiny with the teacher's latent channels and downscale (one stage per VAE level)."""
    stages = len(teacher.config.block_out_channels)
    return AutoencoderTiny(
        encoder_block_out_channels=(width,) * stages,
        decoder_block_out_channels=(width,) * stages,
        latent_channels=teacher.config.latent_channels,
        num_encoder_blocks=(1,) + (depth,) * (stages - 1),
        num_decoder_blocks=(depth,) * (stages - 1) + (1,),
    )


def save_tiny_vae(tiny: AutoencoderTiny, folder: Path, teacher: AutoencoderKL, cfg: TinyVAEConfig, step: int) -> None:
    """The diffusers folder, and ``ssdxl.json`` naming the latents it reads (what ``--tiny-vae`` checks)."""
    copy.deepcopy(tiny).to(DTYPES[cfg.save_dtype]).save_pretrained(folder, safe_serialization=True)
    info = {"ssdxl.mode": "tiny-vae", "latent_space": latent_space(teacher), "ssdxl.base_model": cfg.model,
            "ssdxl.steps": step}  # fmt: skip
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


@torch.no_grad()
def measure(tiny: AutoencoderTiny, teacher: AutoencoderKL, fmt: LatentFormat, batches: list[Batch]) -> dict[str, float]:
    """Mean PSNR (dB, pixels in [-1, 1] clamped) against the teacher's decode of the teacher's latents of each image:
    the tiny decoder's, the linear preview map's (``latent_preview``'s, upsampled bilinearly to full size), and the
    teacher's decode of the tiny encoder's latents."""
    scores: dict[str, list[float]] = {"decoder_psnr_db": [], "linear_preview_psnr_db": [], "encoder_psnr_db": []}
    factors, bias = torch.tensor(fmt.rgb_factors), torch.tensor(fmt.rgb_bias)
    device = next(tiny.parameters()).device
    for batch in batches:
        x = batch.pixels.to(device)
        latents = to_unet(teacher, teacher.encode(x).latent_dist.mode())
        reference = teacher.decode(to_vae(teacher, latents)).sample.clamp(-1, 1)
        preview = torch.einsum("bchw,cr->brhw", latents.float().cpu(), factors) + bias[:, None, None]
        preview = F.interpolate(preview, size=reference.shape[-2:], mode="bilinear", align_corners=False)
        candidates = {
            "decoder_psnr_db": decode(tiny, latents),
            "linear_preview_psnr_db": preview.to(device),
            "encoder_psnr_db": teacher.decode(to_vae(teacher, encode(tiny, x))).sample,
        }
        for name, pixels in candidates.items():
            scores[name] += psnr_db(pixels.float(), reference)
    return {name: round(sum(v) / len(v), 2) for name, v in scores.items() if v and math.isfinite(sum(v))}


def _source(
    cfg: TinyVAEConfig, seed: int, split: str = "train", sizes: list[tuple[int, int]] | None = None
) -> IndexedSource:
    """The model's own training data: the shapes world for the built-in models (drawn at ``sizes``), else a folder
    of images."""
    data = data_or_shapes(cfg.data, cfg.model, "a folder of images like the model's own")
    if data == "shapes":
        return open_source("shapes", seed, TWO_OBJECT_FRACTION, split=split, sizes=sizes)
    return open_source(data, cfg.seed, caption="")  # a folder has no held-out split: its first images measure


def _buckets(cfg: TinyVAEConfig, parts: Components, source: IndexedSource) -> list[tuple[int, int]]:
    return buckets_at(source, cfg.resolution or int(parts.defaults.get("width", 1024)), parts.size_multiple)
