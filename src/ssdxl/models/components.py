"""The parts of one model (SDXL family or SD 1.x / 2.x), built from configs, saved as a standard diffusers folder.

``Components`` is what every loader returns and what the engine, trainer and distiller use; its
``family`` says how the parts fit together. A folder written by ``save`` loads in stock diffusers
(``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline.from_pretrained``) and back in ssdxl.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ssdxl.models.families import Family, LatentFormat, family_of
from ssdxl.models.presets import Preset
from ssdxl.models.tokenizers import clip_tokenizer

# model_index.json of an SDXL base model; a refiner has no text_encoder / tokenizer, SD 1.x / 2.x no *_2.
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
    text_encoder_2: CLIPTextModelWithProjection | None
    tokenizer: CLIPTokenizer | None
    tokenizer_2: CLIPTokenizer | None
    scheduler_config: dict[str, Any]
    pipeline: dict[str, Any] = field(default_factory=dict)  # force_zeros_for_empty_prompt, ...
    defaults: dict[str, Any] = field(default_factory=dict)  # width, height, steps, guidance, scheduler
    name: str = "model"

    @property
    def family(self) -> Family:
        te = self.text_encoder.config.to_dict() if self.text_encoder is not None else None
        return family_of(self.unet.config, te, self.scheduler_config)

    @property
    def is_refiner(self) -> bool:
        return self.family.is_refiner

    @property
    def latent_format(self) -> LatentFormat:
        """The family's latent format with this model's own VAE scale and preview map where it has them."""
        fmt = self.family.latents
        own = {"scale": self.vae.config.scaling_factor, "shift": self.vae.config.get("shift_factor") or 0.0}
        if "latent_rgb_factors" in self.pipeline:
            own["rgb_factors"] = tuple(map(tuple, self.pipeline["latent_rgb_factors"]))
            own["rgb_bias"] = tuple(self.pipeline["latent_rgb_bias"])
        return dataclasses.replace(fmt, **own)

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
        """The stock diffusers pipeline around these very modules (nothing copied, nothing on disk): the
        baseline benchmarks compare against, and what training previews are drawn with."""
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

        if not self.family.is_sdxl:
            pipe = StableDiffusionPipeline(
                vae=self.vae,
                text_encoder=self.text_encoder,
                tokenizer=self.tokenizer,
                unet=self.unet,
                scheduler=EulerDiscreteScheduler.from_config(self.scheduler_config),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            return pipe
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
            text_encoder_2=plain(self.text_encoder_2.config) if self.text_encoder_2 is not None else None,
            scheduler=dict(self.scheduler_config),
            pipeline=dict(self.pipeline),
            defaults=dict(self.defaults),
        )

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write a diffusers pipeline folder (safetensors weights, optionally cast to ``dtype``)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sdxl = self.family.is_sdxl
        index: dict[str, Any] = {"_class_name": _pipeline_class(self), "_diffusers_version": _diffusers_version()}
        if sdxl:
            index["force_zeros_for_empty_prompt"] = bool(self.pipeline.get("force_zeros_for_empty_prompt", True))
        else:  # StableDiffusionPipeline's index, without the safety checker
            index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        if self.is_refiner:
            index["requires_aesthetics_score"] = bool(self.pipeline.get("requires_aesthetics_score"))
        slots = ("text_encoder", "tokenizer") + (("text_encoder_2", "tokenizer_2") if sdxl else ())
        for name in slots:
            index[name] = [None, None]  # filled below when present
        for name, module in self.modules().items():
            # a cast copy, one module at a time: casting in place and back would round the weights
            stored = module if dtype is None else copy.deepcopy(module).to(dtype)
            stored.save_pretrained(folder / name, safe_serialization=True)
            del stored
            index[name] = DIFFUSERS_LIBS[name]
        for name in ("tokenizer", "tokenizer_2"):
            tokenizer = getattr(self, name)
            if tokenizer is not None:
                index[name] = DIFFUSERS_LIBS[name]
                tokenizer.save_pretrained(folder / name)
        scheduler_class = self.scheduler_config.get("_class_name", "EulerDiscreteScheduler")
        index["scheduler"] = ["diffusers", scheduler_class]
        (folder / "scheduler").mkdir(exist_ok=True)
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler_file.write_text(json.dumps(self.scheduler_config, indent=2))
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        info = {"name": self.name, "pipeline": self.pipeline, "defaults": self.defaults}
        (folder / SSDXL_INFO).write_text(json.dumps(info, indent=2))
        return folder


def _pipeline_class(components: Components) -> str:
    if not components.family.is_sdxl:
        return "StableDiffusionPipeline"
    return "StableDiffusionXLImg2ImgPipeline" if components.is_refiner else "StableDiffusionXLPipeline"


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
        text_encoder = text_encoder_2 = None
        if preset.text_encoder is not None:
            text_encoder = CLIPTextModel(CLIPTextConfig(**_without_meta(preset.text_encoder)))
        unet = UNet2DConditionModel.from_config(preset.unet)
        vae = AutoencoderKL.from_config(preset.vae)
        if preset.text_encoder_2 is not None:
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_without_meta(preset.text_encoder_2)))
    # SD 2.x's only tower is OpenCLIP's, whose tokenizer pads as SDXL's second one does
    first = "tokenizer_2" if preset.family.name.startswith("sd2") else "tokenizer"
    return Components(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=clip_tokenizer(first) if text_encoder is not None else None,
        tokenizer_2=clip_tokenizer("tokenizer_2") if text_encoder_2 is not None else None,
        scheduler_config=dict(preset.scheduler),
        pipeline=dict(preset.pipeline),
        defaults=dict(preset.defaults),
        name=name or preset.name,
    )


def _without_meta(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "architectures"}
