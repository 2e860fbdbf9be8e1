"""``train``: the whole recipe, stage after stage, in one resumable run folder.

<run>/config.json          the settings (``--resume`` reads them back)
<run>/log.jsonl            one JSON line per log interval / event
<run>/checkpoints/*.pt     latest internal checkpoint of each stage
<run>/vae/                 stage 1 result (diffusers AutoencoderKL + metrics.json)
<run>/previews/*.png       samples from each denoiser checkpoint
<run>/model/               the diffusers pipeline folder (EMA weights), rewritten at every
                           checkpoint; after the last step it is the finished model
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ssdxl.errors import UserError
from ssdxl.models.components import Components, build_components
from ssdxl.models.loading import load_components
from ssdxl.training.autoencoder import adopt_vae, save_vae, train_autoencoder
from ssdxl.training.config import TrainConfig, architecture
from ssdxl.training.data import open_source
from ssdxl.training.denoiser import train_denoiser
from ssdxl.training.export import export_model
from ssdxl.training.grow import grow_unet


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train the autoencoder, then the denoiser, into ``cfg.out``; returns the diffusers folder."""
    cfg.validate()
    open_source(cfg.data, cfg.seed)  # a bad --data fails now, before anything is written
    run = cfg.run_dir
    started = (run / "checkpoints").exists() or (run / "vae").exists()
    if started and not resume:
        raise UserError(f"{str(run)!r} already holds a training run; pass --resume or choose another --out")
    cfg.save()

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        preset, buckets = architecture(cfg.arch)
        parts = build_components(preset, seed=cfg.seed, name=cfg.name)
        init_vae = start_from(parts, cfg.init) if cfg.init is not None else None
        if (run / "vae" / "config.json").is_file():
            parts.vae = AutoencoderKL.from_pretrained(run / "vae")
        elif init_vae is not None and same_shape(init_vae, parts.vae):
            parts.vae = init_vae  # the model's VAE is this run's stage 1, saved so --resume reads it back
            save_vae(init_vae, run / "vae", {})
        elif cfg.vae is not None:
            parts.vae = adopt_vae(Path(cfg.vae), run / "vae", parts.vae)
        else:  # from scratch, or (another VAE shape) taught the --init model's latent space
            parts.vae = train_autoencoder(cfg, parts.vae, buckets, teacher=init_vae)
        final = train_denoiser(cfg, parts, buckets)
        return export_model(final, run / "model", cfg.save_dtype)
    finally:
        torch.set_num_threads(threads)  # a library call should not leave the process re-tuned


def start_from(parts: Components, model: str) -> AutoencoderKL:
    """Fine-tuning: copy a trained model's UNet and text encoders into ``parts`` (built from the
    run's architecture) and return its VAE, config included (its ``scaling_factor`` was measured
    on its latents). The text encoders must match the architecture exactly; the UNet may also be
    a shallower one of the same widths, which grows (``grow.grow_unet``); a VAE of another shape
    (an 8x one for a 4x model) becomes stage 1's teacher.
    """
    trained = load_components(model)
    for slot in ("text_encoder", "text_encoder_2"):
        try:
            getattr(parts, slot).load_state_dict(getattr(trained, slot).state_dict())
        except RuntimeError:
            raise UserError(f"--init {model!r}: its {slot} does not match the run's architecture") from None
    try:
        parts.unet.load_state_dict(trained.unet.state_dict())
    except RuntimeError:
        try:
            grow_unet(parts.unet, trained.unet)
        except UserError as exc:
            raise UserError(f"--init {model!r}: its UNet does not fit the run's architecture ({exc})") from None
    return trained.vae


def same_shape(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether ``a``'s weights load into ``b`` (the same architecture)."""
    shapes = {k: v.shape for k, v in b.state_dict().items()}
    return {k: v.shape for k, v in a.state_dict().items()} == shapes
