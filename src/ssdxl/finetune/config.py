"""What a fine-tuning run is: the mode, the model, the data and every training knob.

Written to ``<run>/config.json`` when a run starts (the run folder sits beside the output:
``style.safetensors`` -> ``style.run/``), so ``--resume`` continues with exactly those settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdxl.adapters.export import LORA_FORMATS
from ssdxl.data.shapes import CONTROL_KINDS
from ssdxl.errors import UserError
from ssdxl.training.accelerator import MIXED_PRECISION

MODES = ("lora", "dreambooth", "embedding", "full", "controlnet", "lcm")
CONFIG_FILE = "config.json"
LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear", "polynomial", "cosine_with_restarts")
CROPS = ("center", "random")
# Learning rates of diffusers' example scripts and kohya-ss's SDXL defaults, per mode.
DEFAULT_LR = {"lora": 1e-4, "dreambooth": 1e-4, "embedding": 5e-3, "full": 1e-5, "controlnet": 1e-5, "lcm": 1e-4}


@dataclass
class FinetuneConfig:
    """Every knob of a run; ``None`` means "the mode's default" (filled in by ``resolved``)."""

    mode: str  # lora, dreambooth, embedding, full, controlnet (``ssdxl finetune``) or lcm (``ssdxl distill lcm``)
    model: str  # model folder, single file, built-in name or repo id (the teacher, for lcm)
    out: str  # a .safetensors file (LoRA, embedding) or a folder (full, controlnet)
    data: str = ""  # image folder (.txt captions or metadata.jsonl) or "shapes"; "" = shapes for built-in models
    seed: int = 0

    # What is trained.
    rank: int = 16
    alpha: float | None = None  # LoRA alpha; None = rank (scale 1)
    train_text_encoder: bool = False  # LoRA / full / dreambooth: the CLIP towers too
    lora_format: str = "diffusers"  # diffusers (peft keys) or kohya (A1111, ComfyUI)
    token: str = ""  # embedding: the new word; "" = the output file's stem
    init_word: str = ""  # embedding: start from this word's vectors ("" = the mean of the vocabulary)
    vectors: int = 1  # embedding: vectors per token
    replace: str = ""  # embedding: this word in the captions becomes the token

    # DreamBooth.
    dreambooth_lora: bool = True  # False: every UNet weight (the output is a model folder)
    instance_prompt: str = ""
    class_prompt: str = ""  # every class image's caption; "" = the class folder's own captions
    class_data: str = ""  # folder of class / regularisation images ("" = <run>/class-images)
    num_class_images: int = 100
    prior_weight: float = 1.0  # 0 turns prior preservation off

    # ControlNet.
    control: str = ""  # the shapes world's control map (layout, edges); "" = layout. Folders bring their own maps
    controlnet_init: str = ""  # start from this ControlNet (diffusers folder) instead of a copy of the UNet

    # LCM distillation (the LCM-LoRA recipe).
    ddim_steps: int = 50  # skipping-step DDIM solver: the teacher's schedule cut into this many steps
    guidance_min: float | None = None  # CFG scale drawn per sample in [min, max]; None = around the teacher's
    guidance_max: float | None = None
    huber_c: float = 0.001  # 0 = L2 consistency loss
    target_ema: float = 0.95  # the consistency target's EMA of the LoRA weights; 0 = the online weights

    # Data.
    resolution: int = 0  # 0 = the model's default size
    buckets: bool = True  # aspect-ratio buckets; off = every image centre-cropped to a square
    crop: str = "center"
    flip: float = 0.0  # chance of a horizontal flip
    caption_dropout: float = 0.0
    allow_upscale: bool = False  # accept images smaller than the resolution (upscaled)

    # Optimisation.
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 1e-2
    snr_gamma: float = 5.0  # min-SNR-gamma weighting; 0 = plain MSE
    ema_decay: float | None = None  # None: 0.999 for full, off otherwise
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False

    # Bookkeeping.
    checkpoint_every: int = 250
    log_every: int = 25
    validation_prompts: list[str] = dataclasses.field(default_factory=list)
    validation_every: int = 0  # 0 = only at the end (when there are prompts)
    threads: int = 0
    save_dtype: str = "float16"  # dtype of the written weights (LoRA, embedding, model folder)

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    @property
    def run_dir(self) -> Path:
        return run_folder(self.out_path)

    @property
    def lora(self) -> bool:
        """Whether the output is a LoRA (DreamBooth's is, unless ``dreambooth_lora`` is off)."""
        return self.mode in ("lora", "lcm") or (self.mode == "dreambooth" and self.dreambooth_lora)

    @property
    def prior(self) -> bool:
        """Prior preservation: the same loss on class images (DreamBooth) or captioned regularisation images."""
        return self.mode in ("lora", "dreambooth", "full") and self.prior_weight > 0 and bool(
            self.class_prompt or self.class_data
        )

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR["lora" if self.lora else "full" if self.mode == "dreambooth" else self.mode]

    @property
    def ema(self) -> float:
        if self.ema_decay is not None:
            return self.ema_decay
        return 0.999 if self.mode == "full" or (self.mode == "dreambooth" and not self.lora) else 0.0

    @property
    def control_kind(self) -> str:
        """The shapes world's control map a ControlNet run trains on."""
        return self.control or CONTROL_KINDS[0]

    @property
    def embedding_token(self) -> str:
        return self.token or self.out_path.stem

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown fine-tuning setting(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise UserError(f"invalid fine-tuning settings: {exc}") from None

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> FinetuneConfig:
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"no fine-tuning run to resume in {str(run_dir)!r} (no {CONFIG_FILE}); drop --resume")
        return cls.from_dict(json.loads(path.read_text()))

    def validate(self) -> None:
        """Every setting a run can be refused for, before any model is loaded or file written."""
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.lora and self.out_path.suffix != ".safetensors":
            raise UserError(f"-o {self.out!r}: a LoRA is written to a .safetensors file")
        if self.mode == "embedding" and self.out_path.suffix != ".safetensors":
            raise UserError(f"-o {self.out!r}: an embedding is written to a .safetensors file")
        if not self.lora and self.mode in ("full", "dreambooth") and self.out_path.suffix:
            raise UserError(f"-o {self.out!r}: a fully fine-tuned model is a folder (give a name without a suffix)")
        if self.mode == "controlnet":
            self._validate_controlnet()
        for name in ("steps", "batch_size", "grad_accum", "rank", "vectors", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("resolution", "warmup_steps", "validation_every", "threads", "num_class_images"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative")
        if self.lr is not None and not self.lr > 0:
            raise UserError("--lr must be positive")
        if self.alpha is not None and not self.alpha > 0:
            raise UserError("--alpha must be positive")
        if self.lora_format not in LORA_FORMATS:
            raise UserError(f"--format must be one of {', '.join(LORA_FORMATS)}, got {self.lora_format!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.crop not in CROPS:
            raise UserError(f"--crop must be one of {', '.join(CROPS)}, got {self.crop!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}")
        for name in ("flip", "caption_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if not 0.0 <= self.ema < 1.0 or not 0.0 <= self.target_ema < 1.0:
            raise UserError("EMA decays must be in [0, 1)")
        if self.snr_gamma < 0 or self.prior_weight < 0 or self.huber_c < 0:
            raise UserError("--snr-gamma, --prior-weight and --huber-c must not be negative")
        if self.mode == "dreambooth" and not self.instance_prompt:
            raise UserError("dreambooth needs --instance-prompt (the caption of every instance image)")
        if self.mode == "dreambooth" and self.prior_weight > 0 and not self.prior:
            raise UserError("prior preservation needs --class-prompt or --class-data (or --prior-weight 0 to skip it)")
        if self.mode == "embedding" and not _is_word(self.embedding_token):
            raise UserError(f"--token {self.embedding_token!r} must be one word without spaces")
        if self.save_dtype not in ("float16", "bfloat16", "float32"):
            raise UserError(f"--save-dtype must be float16, bfloat16 or float32, got {self.save_dtype!r}")
        if self.mode == "lcm" and not 2 <= self.ddim_steps <= 1000:
            raise UserError("--ddim-steps must be in [2, 1000] (the training schedule's length)")
        g_min, g_max = self.guidance_min, self.guidance_max
        if (g_min is not None and g_min < 1) or (g_min is not None and g_max is not None and g_max < g_min):
            raise UserError("guidance range: need 1 <= --guidance-min <= --guidance-max")

    def _validate_controlnet(self) -> None:
        if self.out_path.suffix:
            raise UserError(f"-o {self.out!r}: a ControlNet is a diffusers folder (give a name without a suffix)")
        if self.control and self.data not in ("", "shapes"):
            raise UserError("--control picks a map of the 'shapes' world; a folder brings its own conditioning "
                            "images (metadata.jsonl's conditioning_image or a conditioning/ folder)")  # fmt: skip
        if self.control and self.control not in CONTROL_KINDS:
            raise UserError(f"--control must be one of {', '.join(CONTROL_KINDS)}, got {self.control!r}")
        if self.controlnet_init and not (Path(self.controlnet_init) / "config.json").is_file():
            raise UserError(f"--controlnet-init {self.controlnet_init!r} is not a diffusers ControlNet folder "
                            "(no config.json)")  # fmt: skip
        if self.validation_prompts:
            raise UserError("controlnet runs draw no validation images yet; drop --validation-prompt")
        if self.train_text_encoder:
            raise UserError("a ControlNet run trains the ControlNet only; drop --train-text-encoder")


def run_folder(out: Path) -> Path:
    """Where a run keeps its state, beside its output: ``style.safetensors`` -> ``style.run``; ``./tuned`` ->
    ``./tuned.run``."""
    return out.with_name((out.stem if out.suffix == ".safetensors" else out.name) + ".run")


def _is_word(text: str) -> bool:
    return bool(text) and not any(c.isspace() for c in text)
