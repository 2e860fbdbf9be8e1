"""``ssdxl train``: train an SDXL-architecture model from scratch (autoencoder, then denoiser); ``ssdxl train
tiny-vae``: distil a tiny VAE from a model's VAE (previews and ``--fast-decode``).

``train`` is a plain function with typer annotations; ``ssdxl.cli.main`` registers it with ``TrainCommands`` as its
click class (``command_class``), which adds the ``tiny-vae`` subcommand. This module imports nothing from the CLI app at
import time (no import cycle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from ssdxl.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


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
                                             "(a built-in name or a folder) of the same architecture, or grow it: "
                                             "a UNet with shallower transformer stacks gains identity layers, a VAE "
                                             "that downsamples less teaches stage 1 its latents.")] = None,
    two_object_fraction: Annotated[float | None, typer.Option(help="Shapes world: share of two-object scenes "
                                                              "(default 0.4).")] = None,
    zero_init: Annotated[bool | None, typer.Option("--zero-init/--no-zero-init", help="Start every residual branch "
                         "of the UNet at zero, as latent diffusion does (default off; helps deep stacks).")] = None,
    contrast_weight: Annotated[float | None, typer.Option(help="Shapes world: weight of the contrastive-caption "
                                                          "hinge (relation reversed; default 0 = off).")] = None,
    train_text: Annotated[bool | None, typer.Option("--train-text/--freeze-text", help="Train the text encoders "
                          "with the UNet (default) or keep them as they are (e.g. the --init model's).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out with its saved settings; "
                                         "--steps/--vae-steps/--checkpoint-every/--threads may change.")] = False,
) -> None:  # fmt: skip
    """Train a text-to-image model from scratch, or fine-tune one (--init); writes the diffusers folder OUT/model.
    ssdxl train tiny-vae --help: distil a tiny VAE for previews and --fast-decode."""
    from ssdxl.training import TrainConfig
    from ssdxl.training import train as run_training

    given = {
        "vae_steps": vae_steps, "steps": steps, "batch_size": batch_size, "lr": lr,
        "checkpoint_every": checkpoint_every, "seed": seed, "name": name, "threads": threads, "vae": vae, "init": init,
        "two_object_fraction": two_object_fraction, "zero_init": zero_init,
        "contrast_weight": contrast_weight, "train_text": train_text,
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


def tiny_vae(
    out: Annotated[Path, typer.Option("--out", help="The tiny VAE's folder (a diffusers AutoencoderTiny, for "
                                      "--tiny-vae); the run's state goes beside it in OUT.run/.")],
    model: Annotated[str | None, typer.Option(help="Teacher: the model whose VAE is distilled (built-in name, folder, "
                                              ".safetensors or repo id; default shapes).")] = None,
    data: Annotated[str | None, typer.Option(help="'shapes' (the built-in models' world, their default) or a folder "
                                             "of images like the model's own (no captions needed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimiser steps (default 1200).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (default 8).")] = None,
    scenes: Annotated[int | None, typer.Option(help="Training images, encoded and decoded by the teacher once and "
                                               "reused every epoch (default 768; a folder: at most all).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default 2e-3, cosine to 0).")] = None,
    width: Annotated[int | None, typer.Option(help="Channels of every stage (default 32; TAESD: 64).")] = None,
    depth: Annotated[int | None, typer.Option(help="Blocks per stage (default 2; TAESD: 3).")] = None,
    encoder_weight: Annotated[float | None, typer.Option(help="Weight of the encoder's latent loss (default 1; 0: "
                                                         "decoder only).")] = None,
    resolution: Annotated[int | None, typer.Option(help="Training side: images are resized and centre-cropped to "
                                                   "it (default: the model's default width).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps per checkpoint (default 250).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the weights and the data order (default 0).")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default 2).")] = None,
    mixed_precision: Annotated[str | None, typer.Option(help="auto (default; bf16 where fast), no, bf16.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run for --out with its saved settings; "
                                         "--steps/--checkpoint-every/--threads may change.")] = False,
) -> None:  # fmt: skip
    """Distil a tiny VAE (diffusers AutoencoderTiny, TAESD's network) from a model's VAE, for step previews and
    ssdxl generate --fast-decode --tiny-vae OUT; writes OUT and its metrics.json (PSNR against the model's VAE)."""
    from ssdxl.training.tiny_vae import RESUMABLE, TinyVAEConfig, train_tiny_vae

    given = {
        "model": model, "data": data, "steps": steps, "batch_size": batch_size, "scenes": scenes, "lr": lr,
        "width": width, "depth": depth, "encoder_weight": encoder_weight, "resolution": resolution,
        "checkpoint_every": checkpoint_every, "seed": seed, "threads": threads, "mixed_precision": mixed_precision,
    }  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if resume:
        fixed = sorted(k for k in given if k not in RESUMABLE)
        if fixed:
            raise UserError(
                f"--resume keeps the run's settings; drop {', '.join('--' + k.replace('_', '-') for k in fixed)}"
            )
        cfg = TinyVAEConfig.load(out)
        for key, value in given.items():
            setattr(cfg, key, value)
    else:
        cfg = TinyVAEConfig(out=str(out), **given)
    folder = train_tiny_vae(cfg, resume=resume)
    typer.echo(f"tiny VAE: {folder}")


def _user_errors(func: F) -> F:
    """The CLI's one-line error handling (``ssdxl.cli.main.user_errors``), looked up when called."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ssdxl.cli.main import user_errors

        return user_errors(func)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class TrainCommands(TyperGroup):
    """``ssdxl train [OPTIONS]`` runs ``train``; ``ssdxl train tiny-vae [OPTIONS]`` runs its subcommand alone, with
    ``train``'s options (``--out`` is required there) neither parsed nor run."""

    SUBCOMMANDS: dict[str, Callable[..., None]] = {"tiny-vae": tiny_vae}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(invoke_without_command=True, **attrs)
        for name, function in self.SUBCOMMANDS.items():
            sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
            sub.command(name)(_user_errors(function))
            self.add_command(typer.main.get_command(sub), name)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] in self.commands:
            ctx._protected_args, ctx.args = args[:1], args[1:]
            return ctx.args
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        if not ctx._protected_args:
            return super().invoke(ctx)
        args = [*ctx._protected_args, *ctx.args]
        ctx._protected_args, ctx.args = [], []
        with ctx:
            name, command, rest = self.resolve_command(ctx, args)
            ctx.invoked_subcommand = name
            with command.make_context(name, rest, parent=ctx) as sub:
                return sub.command.invoke(sub)


train.command_class = TrainCommands  # type: ignore[attr-defined]  # read by cli.main.register_subcommands


if __name__ == "__main__":  # ``python -m ssdxl.cli.train``: usable before/without the ``ssdxl`` entry point
    typer.run(train)
