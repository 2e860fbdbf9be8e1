"""``ssdxl train``: train an SDXL-architecture model from scratch (autoencoder, then denoiser).

A plain function with typer annotations; ``ssdxl.cli.main`` registers it, so this module
imports nothing from the CLI app (no import cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ssdxl.errors import UserError


def train(
    out: Annotated[Path, typer.Option("--out", help="Run folder: checkpoints, logs, previews, model/.")],
    data: Annotated[str, typer.Option(help="'shapes' (the procedural world) or an image+caption folder.")] = "shapes",
    arch: Annotated[str, typer.Option(help="Architecture from ssdxl/training/architectures.json.")] = "builtin",
    vae_steps: Annotated[int | None, typer.Option(help="Autoencoder steps (default 2500).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoiser steps (default 3000).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Denoiser batch size (default 64).")] = None,
    lr: Annotated[float | None, typer.Option(help="Denoiser learning rate (default 5e-4).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps per checkpoint (default 500).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights, data order and noise (default 0).")] = None,
    name: Annotated[str | None, typer.Option(help="Model name written into the folder (default ssdxl-shapes).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default 2); 1 is faster on a busy machine.")] = None,
    vae: Annotated[str | None, typer.Option(help="Start from this trained autoencoder (a diffusers AutoencoderKL "
                                            "folder, e.g. an earlier run's RUN/vae) and skip stage 1.")] = None,
    init: Annotated[str | None, typer.Option(help="Fine-tune: start every component from this trained model "
                                             "(a built-in name or a folder) of the same architecture.")] = None,
    two_object_fraction: Annotated[float | None, typer.Option(help="Shapes world: share of two-object scenes "
                                                              "(default 0.4).")] = None,
    zero_init: Annotated[bool | None, typer.Option("--zero-init/--no-zero-init", help="Start every residual branch "
                         "of the UNet at zero, as latent diffusion does (default off; helps deep stacks).")] = None,
    contrast_weight: Annotated[float | None, typer.Option(help="Shapes world: weight of the contrastive-caption "
                                                          "hinge (relation reversed; default 0 = off).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out with its saved settings; "
                                         "--steps/--vae-steps/--checkpoint-every/--threads may change.")] = False,
) -> None:  # fmt: skip
    """Train a text-to-image model from scratch, or fine-tune one (--init); writes the diffusers folder OUT/model."""
    from ssdxl.training import TrainConfig
    from ssdxl.training import train as run_training

    given = {
        "vae_steps": vae_steps, "steps": steps, "batch_size": batch_size, "lr": lr,
        "checkpoint_every": checkpoint_every, "seed": seed, "name": name, "threads": threads, "vae": vae, "init": init,
        "two_object_fraction": two_object_fraction, "zero_init": zero_init,
        "contrast_weight": contrast_weight,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if resume:
        fixed = sorted(k for k in given if k not in ("vae_steps", "steps", "checkpoint_every", "threads"))
        if fixed:
            raise UserError(
                f"--resume keeps the run's settings; drop {', '.join('--' + k.replace('_', '-') for k in fixed)}"
            )
        cfg = TrainConfig.load(out)
        for key, value in given.items():
            setattr(cfg, key, value)
    else:
        cfg = TrainConfig(out=str(out), data=data, arch=arch, **given)
    folder = run_training(cfg, resume=resume)
    typer.echo(f"model: {folder}")


if __name__ == "__main__":  # ``python -m ssdxl.cli.train``: usable before/without the ``ssdxl`` entry point
    typer.run(train)
