"""What a training run is: the hyperparameters (``TrainConfig``) and the architecture (data, in
``architectures.json``).

A run folder holds ``config.json`` (this config), so ``--resume`` continues with exactly the
settings the run started with.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ssdxl.errors import UserError
from ssdxl.models.presets import Preset

CONFIG_FILE = "config.json"


@dataclass
class TrainConfig:
    """Every knob of a run. Defaults are the built-in model's recipe."""

    out: str  # run folder: config, checkpoints, logs, previews, the final diffusers folder
    data: str = "shapes"  # "shapes" (the procedural world) or a folder of images + .txt captions
    arch: str = "builtin"  # an entry of architectures.json
    name: str = "ssdxl-shapes"
    seed: int = 0
    two_object_fraction: float = 0.4  # shapes world only; pairs are the harder half, so oversample them

    # Stage 1, autoencoder: reconstruction of whole images. Not crops: GroupNorm statistics of a
    # 32 px crop differ from a whole 64 px image's, and a crop-trained VAE measured 29.6 dB on
    # crops but 22.7 dB on whole images (shifted background colours).
    vae: str | None = None  # a trained AutoencoderKL folder to start from instead (skips stage 1)
    init: str | None = None  # a trained model of the same architecture to fine-tune (its VAE skips stage 1)
    vae_steps: int = 2500
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6

    # Stage 2, denoiser: UNet + both text towers, jointly (or the UNet alone: train_text False).
    steps: int = 3000
    train_text: bool = True  # False keeps the text towers as they are (a grown model keeps its own)
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    snr_gamma: float = 5.0
    # Contrastive captions (shapes world: the relation reversed). Where a sample has one and its
    # timestep is in the noisiest half, its loss must beat the contrast caption's by this margin
    # (relative); the hinge is added with this weight. 0 turns it off.
    contrast_weight: float = 0.0
    contrast_margin: float = 0.2
    zero_init: bool = False  # residual branches start at zero (latent diffusion's init); helps deep stacks

    checkpoint_every: int = 500
    log_every: int = 50
    threads: int = 2
    bf16: bool = True  # autocast matmuls to bfloat16 (AMX); weights and optimiser stay float32
    save_dtype: str = "float16"  # dtype of the exported diffusers weights

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainConfig:
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise UserError(f"{str(run_dir)!r} is not a training run folder (no {CONFIG_FILE}); drop --resume")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in json.loads(path.read_text()).items() if k in known}
        return cls(**{**values, "out": str(run_dir)})

    def validate(self) -> None:
        if self.arch not in architecture_names():
            raise UserError(f"unknown architecture {self.arch!r}; choose one of: {', '.join(architecture_names())}")
        for name in ("vae_steps", "steps", "batch_size", "vae_batch_size", "checkpoint_every", "threads"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.two_object_fraction <= 1.0:
            raise UserError("two-object fraction must be in [0, 1]")
        if self.vae is not None and not (Path(self.vae) / "config.json").is_file():
            raise UserError(f"--vae {self.vae!r} is not a diffusers autoencoder folder (no config.json)")
        if self.init is not None and self.vae is not None:
            raise UserError("--init brings its own autoencoder; drop --vae")
        if self.contrast_weight < 0.0 or self.contrast_margin < 0.0:
            raise UserError("contrast weight and margin must be at least 0")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise UserError("caption dropout must be in [0, 1)")


@cache
def _architectures() -> dict[str, Any]:
    text = resources.files("ssdxl.training").joinpath("architectures.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def architecture_names() -> list[str]:
    return list(_architectures())


def architecture(name: str) -> tuple[Preset, list[tuple[int, int]]]:
    """The architecture as a ``Preset`` (so ``build_components`` builds it) and its (W, H) buckets."""
    if name not in _architectures():
        raise UserError(f"unknown architecture {name!r}; choose one of: {', '.join(architecture_names())}")
    entry = json.loads(json.dumps(_architectures()[name]))  # a deep copy callers may change
    buckets = [(int(w), int(h)) for w, h in entry.pop("buckets")]
    return Preset(name=name, **entry), buckets
