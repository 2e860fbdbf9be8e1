"""Stage 1: the autoencoder (AutoencoderKL), trained for reconstruction with a small KL term.

Read top to bottom: data, optimiser, resume, loop, checkpoint, then the two numbers the rest of
the system needs from it: reconstruction PSNR on held-out images (an under-trained VAE leaves
colour specks at shape edges that no denoiser can fix) and ``scaling_factor`` (1 / latent std,
so the denoiser sees unit-variance latents, as SDXL's 0.13025 does for its VAE).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ssdxl.errors import UserError
from ssdxl.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from ssdxl.training.config import TrainConfig
from ssdxl.training.data import Batch, BucketBatches, IndexedSource, fixed_batches, open_source
from ssdxl.training.optim import adamw, autocast, cosine_with_warmup, optimizer_step
from ssdxl.training.progress import Progress

STAGE = "autoencoder"
EVAL_IMAGES = 192  # held-out images for PSNR and the latent statistics


def train_autoencoder(
    cfg: TrainConfig, vae: AutoencoderKL, buckets: list[tuple[int, int]], teacher: AutoencoderKL | None = None
) -> AutoencoderKL:
    """Train ``vae`` in place for ``cfg.vae_steps`` steps (resuming a checkpoint if there is one),
    then measure it, set its ``scaling_factor`` and save it to ``<run>/vae``.

    With a ``teacher`` (the VAE of a model being grown, which downsamples less), ``vae`` learns the
    teacher's latent space instead of one of its own (:class:`LatentTeacher`), so the grown model's
    UNet reads its latents as it read the teacher's, at a larger image size."""
    run = cfg.run_dir
    taught = LatentTeacher.of(teacher, vae) if teacher is not None else None
    source = open_source(cfg.data, cfg.seed, cfg.two_object_fraction, sizes=buckets)
    batches = BucketBatches(source, buckets, cfg.vae_batch_size, seed=cfg.seed)
    optimizer = adamw(vae.named_parameters(), cfg.vae_lr, weight_decay=0.0)
    schedule = cosine_with_warmup(optimizer, warmup=min(100, cfg.vae_steps // 10), total=cfg.vae_steps)

    step = 0
    ckpt = checkpoint_path(run, STAGE)
    if ckpt.is_file():
        state = load_checkpoint(ckpt)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        batches.load_state_dict(state["data"])
        step = state["step"]

    vae.train()
    progress = Progress(STAGE, step, cfg.vae_steps, run / "log.jsonl", cfg.log_every)
    while step < cfg.vae_steps:
        x = next(batches).pixels
        if taught is not None:
            loss, kl = taught.loss(vae, x, cfg.bf16)
        else:
            with autocast(cfg.bf16):
                posterior = vae.encode(x).latent_dist
                recon = vae.decode(posterior.sample()).sample.float()
            kl = posterior.kl().float().mean() / posterior.mean[0].numel()  # per latent element
            loss = reconstruction_loss(recon, x) + cfg.kl_weight * kl
        optimizer_step(loss, vae.parameters(), optimizer, schedule)
        step += 1
        progress.step(step, loss.item(), kl=round(kl.item(), 3), lr=schedule.get_last_lr()[0])

        if step % cfg.checkpoint_every == 0 or step == cfg.vae_steps:
            state = {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            state |= {"schedule": schedule.state_dict(), "data": batches.state_dict()}
            save_checkpoint(ckpt, state)
    progress.close()

    vae.eval()
    held_out = fixed_batches(_eval_source(cfg, buckets), buckets, EVAL_IMAGES, batch_size=64)
    psnr, latent_std, latent_mean = measure(vae, held_out)
    metrics = {"psnr_db": psnr, "latent_std": latent_std, "latent_mean": latent_mean}
    if taught is not None:
        metrics["teacher_latent_psnr_db"] = taught.latent_psnr(vae, held_out)
        vae.register_to_config(scaling_factor=teacher.config.scaling_factor, shift_factor=teacher.config.shift_factor)
    else:
        vae.register_to_config(scaling_factor=round(1.0 / latent_std, 5))
    save_vae(vae, run / "vae", metrics)
    progress.note(step=step, psnr_db=round(psnr, 2), scaling_factor=vae.config.scaling_factor)
    return vae


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + L2: L1 keeps edges sharp, L2 keeps flat colours exact."""
    return (recon - x).abs().mean() + (recon - x).pow(2).mean()


@dataclass
class LatentTeacher:
    """A smaller-scale VAE whose latent space a new VAE learns: for an image ``x``, the teacher encodes
    ``x`` shrunk by ``factor`` (what the teacher's model saw at its size), the new encoder must give the
    same posterior from ``x`` itself, and the new decoder must draw ``x`` from the teacher's latents
    (a super-resolving decoder: the detail the small latents leave out is learnt from the data)."""

    vae: AutoencoderKL
    factor: int

    @classmethod
    def of(cls, teacher: AutoencoderKL, vae: AutoencoderKL) -> LatentTeacher:
        if teacher.config.latent_channels != vae.config.latent_channels:
            raise UserError(f"the --init model's VAE has {teacher.config.latent_channels} latent channels, "
                            f"the architecture's {vae.config.latent_channels}")  # fmt: skip
        levels = len(vae.config.block_out_channels) - len(teacher.config.block_out_channels)
        if levels < 0:
            raise UserError("the --init model's VAE downsamples more than the architecture's; it cannot teach it")
        return cls(teacher.requires_grad_(False).eval(), 2**levels)

    def loss(self, vae: AutoencoderKL, x: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder reconstruction + encoder posterior match, the match alone)."""
        with torch.no_grad(), autocast(bf16):
            target = self.vae.encode(self.shrink(x)).latent_dist
            latents = target.sample().float()
        with autocast(bf16):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(latents).sample.float()
        match = (posterior.mean.float() - target.mean).pow(2).mean()
        match = match + 0.1 * (posterior.logvar.float() - target.logvar).pow(2).mean()
        return reconstruction_loss(recon, x) + match, match

    def shrink(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, self.factor) if self.factor > 1 else x

    @torch.no_grad()
    def latent_psnr(self, vae: AutoencoderKL, batches: list[Batch]) -> float:
        """PSNR (dB) of the teacher's latents decoded by ``vae``: what the grown model's images look like."""
        psnrs = []
        for batch in batches:
            recon = vae.decode(self.vae.encode(self.shrink(batch.pixels)).latent_dist.mode()).sample
            psnrs += psnr_db(recon, batch.pixels)
        return sum(psnrs) / len(psnrs)


@torch.no_grad()
def measure(vae: AutoencoderKL, batches: list[Batch]) -> tuple[float, float, float]:
    """(mean PSNR in dB of the posterior-mode reconstructions, latent std, latent mean) in float32."""
    psnrs, latents = [], []
    for batch in batches:
        posterior = vae.encode(batch.pixels).latent_dist
        psnrs += psnr_db(vae.decode(posterior.mode()).sample, batch.pixels)
        latents.append(posterior.sample().flatten())
    flat = torch.cat(latents)
    return sum(psnrs) / len(psnrs), flat.std().item(), flat.mean().item()


def psnr_db(recon: torch.Tensor, x: torch.Tensor) -> list[float]:
    """Per-image PSNR of ``recon`` (clamped to the image range) against ``x``, both in [-1, 1]."""
    mse = (recon.clamp(-1, 1) - x).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).tolist()  # peak-to-peak range of [-1, 1] is 2


def save_vae(vae: AutoencoderKL, folder: Path, metrics: dict[str, float]) -> None:
    """The finished stage: a diffusers ``vae`` folder plus its metrics; its presence marks stage 1 done."""
    vae.save_pretrained(folder, safe_serialization=True)
    clean = {k: round(v, 4) if math.isfinite(v) else None for k, v in metrics.items()}
    (folder / "metrics.json").write_text(json.dumps(clean, indent=2) + "\n")


def adopt_vae(source: Path, folder: Path, like: AutoencoderKL) -> AutoencoderKL:
    """Stage 1 done by an earlier run: load the autoencoder at ``source`` and save it as this run's.

    It must encode to the latent shape the architecture's UNet expects (``like``'s channels and
    downsampling factor).
    """
    config = AutoencoderKL.load_config(source)
    for key in ("latent_channels", "in_channels"):
        if config.get(key) != like.config[key]:
            raise UserError(f"--vae: {key} is {config.get(key)}, the architecture needs {like.config[key]}")
    if len(config.get("block_out_channels", ())) != len(like.config.block_out_channels):
        raise UserError("--vae downsamples by a different factor than the architecture's autoencoder")
    try:
        vae = AutoencoderKL.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"--vae {source}: {str(exc).splitlines()[0]}") from None
    metrics = source / "metrics.json"
    save_vae(vae, folder, json.loads(metrics.read_text()) if metrics.is_file() else {})
    return vae


def _eval_source(cfg: TrainConfig, buckets: list[tuple[int, int]]) -> IndexedSource:
    """Held-out renders for the shapes world (other seed, held-out combinations); the data itself otherwise."""
    if cfg.data == "shapes":
        return open_source("shapes", cfg.seed + 1, cfg.two_object_fraction, split="heldout", sizes=buckets)
    return open_source(cfg.data, cfg.seed)
