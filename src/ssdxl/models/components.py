"""The parts of one SDXL-family model, built from configs, saved as a standard diffusers folder.

``Components`` is what every loader returns and what the engine, trainer and distiller use.
A folder written by ``save`` loads in stock diffusers
(``StableDiffusionXLPipeline.from_pretrained``) and back in ssdxl.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ssdxl.models.presets import Preset
from ssdxl.models.tokenizers import clip_tokenizer

# model_index.json of a base model; a refiner has no text_encoder / tokenizer.
DIFFUSERS_LIBS = {
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
}
MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")
TRANSFORMERS_NOISE = {
    "transformers_version",
    "dtype",
    "torch_dtype",
    "architectures",
    "model_type",
    "output_hidden_states",
}
SSDXL_INFO = "ssdxl.json"  # name, pipeline flags and generation defaults; diffusers ignores it


@dataclass
class Components:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel | None
    text_encoder_2: CLIPTextModelWithProjection
    tokenizer: CLIPTokenizer | None
    tokenizer_2: CLIPTokenizer
    scheduler_config: dict[str, Any]
    pipeline: dict[str, Any] = field(default_factory=dict)  # force_zeros_for_empty_prompt, ...
    defaults: dict[str, Any] = field(default_factory=dict)  # width, height, steps, guidance, scheduler
    name: str = "model"

    @property
    def is_refiner(self) -> bool:
        return self.text_encoder is None or bool(self.pipeline.get("requires_aesthetics_score"))

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's and the UNet's downsampling together."""
        return self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def modules(self) -> dict[str, torch.nn.Module]:
        named = {name: getattr(self, name) for name in MODULES}
        return {name: module for name, module in named.items() if module is not None}

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Components:
        for module in self.modules().values():
            module.to(device=device, dtype=dtype)
        return self

    def diffusers_pipeline(self):
        """The stock diffusers SDXL pipeline around these very modules (nothing copied, nothing on disk):
        the baseline benchmarks compare against, and what training previews are drawn with."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=EulerDiscreteScheduler.from_config(self.scheduler_config),
            force_zeros_for_empty_prompt=bool(self.pipeline.get("force_zeros_for_empty_prompt", True)),
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def to_preset(self) -> Preset:
        """The configs of these components, as a preset (what single files carry in their metadata)."""

        def plain(config: Any) -> dict[str, Any]:
            items = config.to_dict().items() if hasattr(config, "to_dict") else dict(config).items()
            return {k: v for k, v in items if not k.startswith("_") and k not in TRANSFORMERS_NOISE}

        return Preset(
            name=self.name,
            description=f"{self.name} (exported by ssdxl)",
            unet=plain(self.unet.config),
            vae=plain(self.vae.config),
            text_encoder=plain(self.text_encoder.config) if self.text_encoder is not None else None,
            text_encoder_2=plain(self.text_encoder_2.config),
            scheduler=dict(self.scheduler_config),
            pipeline=dict(self.pipeline),
            defaults=dict(self.defaults),
        )

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write a diffusers pipeline folder (safetensors weights, optionally cast to ``dtype``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {
            "_class_name": "StableDiffusionXLImg2ImgPipeline" if self.is_refiner else "StableDiffusionXLPipeline",
            "_diffusers_version": _diffusers_version(),
            "force_zeros_for_empty_prompt": bool(self.pipeline.get("force_zeros_for_empty_prompt", True)),
        }
        if self.is_refiner:
            index["requires_aesthetics_score"] = bool(self.pipeline.get("requires_aesthetics_score"))
        for name, module in self.modules().items():
            # a cast copy, one module at a time: casting in place and back would round the weights
            stored = module if dtype is None else copy.deepcopy(module).to(dtype)
            stored.save_pretrained(folder / name, safe_serialization=True)
            del stored
            index[name] = DIFFUSERS_LIBS[name]
        for name in ("tokenizer", "tokenizer_2"):
            tokenizer = getattr(self, name)
            index[name] = DIFFUSERS_LIBS[name] if tokenizer is not None else [None, None]
            if tokenizer is not None:
                tokenizer.save_pretrained(folder / name)
        if self.text_encoder is None:
            index["text_encoder"] = [None, None]
        scheduler_class = self.scheduler_config.get("_class_name", "EulerDiscreteScheduler")
        index["scheduler"] = ["diffusers", scheduler_class]
        (folder / "scheduler").mkdir(exist_ok=True)
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler_file.write_text(json.dumps(self.scheduler_config, indent=2))
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        info = {"name": self.name, "pipeline": self.pipeline, "defaults": self.defaults}
        (folder / SSDXL_INFO).write_text(json.dumps(info, indent=2))
        return folder


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def build_components(preset: Preset, seed: int = 0, name: str | None = None, empty: bool = False) -> Components:
    """Components with random float32 weights, reproducible for ``seed``.

    ``empty=True`` puts the parameters on the meta device instead (no memory, no init time), for
    loaders that assign real tensors right after.
    """
    torch.manual_seed(seed)
    with init_empty_weights() if empty else contextlib.nullcontext():
        text_encoder = None
        if preset.text_encoder is not None:
            text_encoder = CLIPTextModel(CLIPTextConfig(**_without_meta(preset.text_encoder)))
        unet = UNet2DConditionModel.from_config(preset.unet)
        vae = AutoencoderKL.from_config(preset.vae)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_without_meta(preset.text_encoder_2)))
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer("tokenizer") if text_encoder is not None else None,
        tokenizer_2=clip_tokenizer("tokenizer_2"),
        scheduler_config=dict(preset.scheduler),
        pipeline=dict(preset.pipeline),
        defaults=dict(preset.defaults),
        name=name or preset.name,
    )


def _without_meta(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "architectures"}
