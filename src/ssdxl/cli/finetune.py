"""``ssdxl finetune lora|dreambooth|embedding|full|controlnet`` and ``ssdxl distill lcm``: one option table,
one runner.

Every option is a row of ``OPTIONS`` (its type, help and the modes it applies to), and each
subcommand's signature is built from the rows of its mode, so the six commands share one
definition of every option. A left-out option is ``None``: the run's default (``FinetuneConfig``),
or on ``--resume`` the value the run started with.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from ssdxl.errors import UserError

ALL = ("lora", "dreambooth", "embedding", "full", "controlnet", "lcm")
TUNE = ("lora", "dreambooth", "embedding", "full", "controlnet")
DRAWS = tuple(m for m in ALL if m != "controlnet")  # modes with validation images (a ControlNet needs maps)
LORA = ("lora", "dreambooth", "lcm")
PRIOR = ("lora", "dreambooth", "full")  # modes that can keep the model's prior with class / regularisation images
# May change on --resume: how long and how the remaining steps run, not what is trained.
RESUMABLE = {"out", "steps", "checkpoint_every", "log_every", "validation_every", "threads", "resume"}


@dataclass(frozen=True)
class Opt:
    name: str  # FinetuneConfig field (or out / resume / model)
    kind: Any  # the Python type typer parses
    help: str
    modes: tuple[str, ...] = ALL
    flags: tuple[str, ...] = ()  # typer's spellings when not the default --name


OPTIONS = (
    Opt("model", str, "Model to tune: folder, .safetensors, built-in name or repo id.", TUNE),
    Opt("model", str, "Teacher: folder, .safetensors, built-in name or repo id.", ("lcm",), ("--teacher",)),
    Opt("out", Path, "Output: a .safetensors file (LoRA, embedding) or a folder (full, controlnet); run state in "
        "OUT.run/.", flags=("-o", "--out")),
    Opt("data", str, "Images with .txt captions or metadata.jsonl, or 'shapes' (the default for built-in models).",
        DRAWS),
    Opt("data", str, "Images with metadata.jsonl (text, conditioning_image columns) or .txt captions and a "
        "conditioning/ folder of same-name maps, or 'shapes' (the default for built-in models).", ("controlnet",)),
    Opt("control", str, "The 'shapes' world's control map: layout (default; silhouettes) or edges (outlines).",
        ("controlnet",)),
    Opt("controlnet_init", str, "Start from this ControlNet (diffusers folder) instead of a copy of the UNet.",
        ("controlnet",)),
    Opt("instance_prompt", str, "Caption of every instance image, e.g. 'a photo of sks dog'.", ("dreambooth",)),
    Opt("class_prompt", str, "The class, for prior preservation: 'a photo of a dog'; its images are drawn by the "
        "model itself.", PRIOR),
    Opt("class_data", str, "Folder of class images (default OUT.run/class-images); without --class-prompt, "
        "captioned regularisation images used as they are.", PRIOR),
    Opt("num_class_images", int, "Class images drawn for --class-prompt (default 100).", PRIOR),
    Opt("prior_weight", float, "Weight of the prior-preservation loss (default 1; 0 = off).", PRIOR),
    Opt("dreambooth_lora", bool, "Train a LoRA (default) or every UNet weight into a model folder.", ("dreambooth",),
        ("--lora/--full",)),
    Opt("token", str, "The new word (default: the output file's name); use it in prompts.", ("embedding",)),
    Opt("init_word", str, "Start from this word's vectors (default: the vocabulary's mean).", ("embedding",)),
    Opt("vectors", int, "Vectors per token (default 1).", ("embedding",)),
    Opt("replace", str, "This word in the captions becomes the token (e.g. 'dog').", ("embedding",)),
    Opt("rank", int, "LoRA rank (default 16).", LORA),
    Opt("alpha", float, "LoRA alpha (default: the rank).", LORA),
    Opt("lora_format", str, "diffusers (default; peft keys) or kohya (A1111, ComfyUI).", LORA, ("--format",)),
    Opt("train_text_encoder", bool, "Train the CLIP text towers too.", ("lora", "dreambooth", "full"),
        ("--train-text-encoder",)),
    Opt("ddim_steps", int, "Solver steps the teacher's schedule is cut into (default 50).", ("lcm",)),
    Opt("guidance_min", float, "Lowest CFG scale drawn per sample (default 3/4 of the teacher's).", ("lcm",)),
    Opt("guidance_max", float, "Highest CFG scale drawn per sample (default 3/2 of the teacher's).", ("lcm",)),
    Opt("huber_c", float, "Huber loss constant (default 0.001; 0 = L2).", ("lcm",)),
    Opt("target_ema", float, "EMA decay of the consistency target (default 0.95; 0 = online weights).", ("lcm",)),
    Opt("steps", int, "Optimiser steps (default 1000).", ALL),
    Opt("batch_size", int, "Images per process and micro-step (default 4).", ALL),
    Opt("grad_accum", int, "Micro-batches per optimiser step (default 1).", ALL),
    Opt("lr", float, "Learning rate (default: lora 1e-4, embedding 5e-3, full and controlnet 1e-5).", ALL),
    Opt("lr_schedule", str, "constant (default), constant_with_warmup, cosine, linear, ...", ALL),
    Opt("warmup_steps", int, "Learning-rate warm-up steps (default 0).", ALL),
    Opt("resolution", int, "Training resolution (default: the model's default size).", ALL),
    Opt("buckets", bool, "Aspect-ratio buckets (default) or square centre crops.", ALL, ("--buckets/--no-buckets",)),
    Opt("crop", str, "center (default) or random; the crop is recorded in SDXL's size conditioning.", ALL),
    Opt("flip", float, "Chance of a horizontal flip (default 0).", ALL),
    Opt("caption_dropout", float, "Share of captions dropped, for guidance (default 0).", TUNE),
    Opt("allow_upscale", bool, "Accept images smaller than the resolution.", ALL, ("--allow-upscale",)),
    Opt("snr_gamma", float, "Min-SNR-gamma loss weighting (default 5; 0 = plain MSE).", TUNE),
    Opt("ema_decay", float, "EMA of the trained weights (default 0.999 for full, else off).", TUNE),
    Opt("mixed_precision", str, "auto (default), no, bf16, fp16.", ALL),
    Opt("gradient_checkpointing", bool, "Trade compute for activation memory.", ALL, ("--gradient-checkpointing",)),
    Opt("validation_prompts", list[str], "Prompt drawn at checkpoints (repeatable).", DRAWS,
        ("--validation-prompt",)),
    Opt("validation_every", int, "Steps between validation images (default: only at the end).", DRAWS),
    Opt("checkpoint_every", int, "Steps per checkpoint; the output is rewritten each time (default 250).", ALL),
    Opt("log_every", int, "Steps per log line (default 25).", ALL),
    Opt("save_dtype", str, "Weights written as float16 (default), bfloat16 or float32.", ALL),
    Opt("seed", int, "Seed of data order and noise (default 0).", ALL),
    Opt("threads", int, "CPU threads (default: torch's choice).", ALL),
    Opt("resume", bool, "Continue the run of OUT with its saved settings.", ALL, ("--resume",)),
)


def run(mode: str, **given: Any) -> None:
    """Build the run's settings from the options given and train."""
    from ssdxl.finetune.config import FinetuneConfig, run_folder

    given = {k: v for k, v in given.items() if v is not None and v != []}
    resume = given.pop("resume", False)
    out = given.pop("out")
    if resume:
        fixed = sorted(set(given) - RESUMABLE)
        if fixed:
            raise UserError(f"--resume keeps the run's settings; drop {', '.join(_flag(k) for k in fixed)}")
        cfg = FinetuneConfig.load(run_folder(Path(out)))
        if cfg.mode != mode:
            command = "ssdxl distill lcm" if cfg.mode == "lcm" else f"ssdxl finetune {cfg.mode}"
            raise UserError(f"{str(out)!r} is a {cfg.mode} run; resume it with {command} --resume")
        cfg.out = str(out)
        for key, value in given.items():
            setattr(cfg, key, value)
    else:
        if "model" not in given:
            raise UserError(f"missing {'--teacher' if mode == 'lcm' else '--model'}")
        for key in ("data", "class_data", "controlnet_init"):  # a resumed run may start from another folder
            if given.get(key) and Path(given[key]).exists():
                given[key] = str(Path(given[key]).resolve())
        cfg = FinetuneConfig(mode=mode, out=str(out), **given)
    if mode == "lcm":
        from ssdxl.distill.lcm import distill_lcm

        path = distill_lcm(cfg, resume=resume)
    else:
        from ssdxl.finetune.loop import finetune

        path = finetune(cfg, resume=resume)
    typer.echo(f"{cfg.mode}: {path}  (run: {cfg.run_dir})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def command(mode: str, doc: str):
    """The typer command of ``mode``: its options from ``OPTIONS``."""
    params = []
    for opt in OPTIONS:
        if mode not in opt.modes:
            continue
        required = opt.name == "out"
        option = typer.Option(*(opt.flags or (_flag(opt.name),)), help=opt.help)
        kind = opt.kind if required else opt.kind | None
        params.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=inspect.Parameter.empty if required else None,
                                        annotation=Annotated[kind, option]))  # fmt: skip

    def subcommand(**given: Any) -> None:
        run(mode, **given)

    subcommand.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    subcommand.__annotations__ = {p.name: p.annotation for p in params}
    subcommand.__doc__ = doc
    subcommand.__name__ = mode
    return subcommand


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Fine-tune a model: a LoRA, a DreamBooth subject, a textual-inversion embedding, every weight, or a "
    "ControlNet.",
)
app.command("lora")(command("lora", "Train a LoRA on captioned images; writes OUT.safetensors."))
app.command("dreambooth")(command("dreambooth", "Teach a subject from a few photos (instance prompt), with prior "
                                  "preservation on the model's own class images."))  # fmt: skip
app.command("embedding")(command("embedding", "Learn a new word (textual inversion) for both text encoders."))
app.command("full")(command("full", "Fine-tune every UNet weight; writes a diffusers model folder OUT."))
app.command("controlnet")(command("controlnet", "Train a ControlNet for the model (its UNet frozen) on images and "
                                  "their control maps; writes a diffusers ControlNet folder OUT."))  # fmt: skip
lcm = command("lcm", "Distil TEACHER into an LCM-LoRA: 2-8 step sampling, guidance 1 (the VegaRT recipe).")
