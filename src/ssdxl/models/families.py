"""Model families: what differs between SD 1.x, SD 2.x, SDXL base and the SDXL refiner, in one object each.

As ComfyUI's ``supported_models.py`` and ``latent_formats.py`` do, every fact a family fixes lives here and
everything else asks: which text towers condition the UNet and which of their layers it reads, whether a
pooled embedding and how many micro-conditioning numbers (``time_ids``) join the timestep, the latent
channels / scale / shift and the linear map that previews latents as colours, default size, steps and
guidance, and which single-file keys mark the family. SSD-1B and Vega are SDXL base with fewer blocks: the
same family, told apart by ``ssdxl.models.detect`` from the UNet's structure.

A family is read from the component configs (``family_of``), so a diffusers folder from anywhere is
recognised without any ssdxl metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ssdxl.errors import UserError

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LatentFormat:
    """The VAE latent space a family's UNet works in: ``scale`` / ``shift`` as the VAE config's
    ``scaling_factor`` / ``shift_factor`` (the config wins where a model ships its own), and the 4x3 least-squares
    map (plus bias) from latents to decoded colours that step previews use instead of the VAE."""

    channels: int
    scale: float
    shift: float
    rgb_factors: tuple[RGB, ...]
    rgb_bias: RGB = (0.0, 0.0, 0.0)


SD15_LATENTS = LatentFormat(
    channels=4,
    scale=0.18215,
    shift=0.0,
    rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
)
SDXL_LATENTS = LatentFormat(
    channels=4,
    scale=0.13025,
    shift=0.0,
    rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    rgb_bias=(0.1084, -0.0175, -0.0011),
)


@dataclass(frozen=True)
class Family:
    """One model family's fixed facts (see the module docstring)."""

    name: str  # sd1, sd2, sd2-v, sdxl, sdxl-refiner
    label: str  # for people: "SD 1.x", "SDXL base", ...
    towers: tuple[str, ...]  # the Components slots of the text encoders, in the order their states concatenate
    final_norm: bool  # states read after the tower's final layer norm (SD 1/2) or raw from a hidden layer (SDXL)
    layer: int  # which hidden layer with clip skip 1: -1 the last (SD 1/2), -2 the penultimate (SDXL)
    pooled: bool  # the last tower's pooled projection is the UNet's ``text_embeds``
    time_ids: int  # micro-conditioning numbers: 6 (sizes), 5 (sizes + aesthetic score), 0 (none)
    latents: LatentFormat
    default_size: int
    default_steps: int
    default_guidance: float
    prediction: str  # what the UNet predicts by default: epsilon or v_prediction
    ldm_text_prefixes: tuple[str, ...]  # single-file (LDM / SGM layout) keys of the text towers
    empty_negative_zeros: bool  # an empty negative prompt is zeros (SDXL base), not the encoded ""
    architecture: str  # what adapters (LoRAs, embeddings) are made for: SD 2.x's two kinds share one
    modelspec: str  # Stability's model-spec ``modelspec.architecture`` (kohya-ss writes it too)
    kohya_version: str  # kohya-ss's ``ss_base_model_version``

    @property
    def is_sdxl(self) -> bool:
        return self.time_ids > 0

    @property
    def is_refiner(self) -> bool:
        return self.time_ids == 5

    def hidden_layer(self, clip_skip: int = 1) -> int:
        """The hidden-state index read for A1111's ``clip_skip`` (1 = the family's usual layer, 2 = one earlier)."""
        return self.layer - (clip_skip - 1)


SD1 = Family(
    name="sd1",
    label="SD 1.x",
    towers=("text_encoder",),
    final_norm=True,
    layer=-1,
    pooled=False,
    time_ids=0,
    latents=SD15_LATENTS,
    default_size=512,
    default_steps=25,
    default_guidance=7.5,
    prediction="epsilon",
    ldm_text_prefixes=("cond_stage_model.transformer.",),
    empty_negative_zeros=False,
    architecture="SD 1.x",
    modelspec="stable-diffusion-v1",
    kohya_version="sd_v1",
)
SD2 = replace(  # OpenCLIP ViT-H's penultimate layer is the last of the 23 diffusers keeps: read as SD 1.x reads its own
    SD1,
    name="sd2",
    label="SD 2.x (epsilon, 512)",
    ldm_text_prefixes=("cond_stage_model.model.",),
    architecture="SD 2.x",
    modelspec="stable-diffusion-v2-512",
    kohya_version="sd_v2",
)
SD2_V = replace(SD2, name="sd2-v", label="SD 2.x (v-prediction, 768)", default_size=768, prediction="v_prediction",
                modelspec="stable-diffusion-v2-768-v", kohya_version="sd_v2_768_v")  # fmt: skip
SDXL = Family(
    name="sdxl",
    label="SDXL base",
    towers=("text_encoder", "text_encoder_2"),
    final_norm=False,
    layer=-2,
    pooled=True,
    time_ids=6,
    latents=SDXL_LATENTS,
    default_size=1024,
    default_steps=30,
    default_guidance=7.0,
    prediction="epsilon",
    ldm_text_prefixes=("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
    empty_negative_zeros=True,
    architecture="SDXL",
    modelspec="stable-diffusion-xl-v1-base",
    kohya_version="sdxl_base_v1-0",
)
SDXL_REFINER = replace(
    SDXL,
    name="sdxl-refiner",
    label="SDXL refiner",
    towers=("text_encoder_2",),
    time_ids=5,
    default_guidance=5.0,
    ldm_text_prefixes=("conditioner.embedders.0.model.",),
    empty_negative_zeros=False,
    architecture="SDXL refiner",
    modelspec="stable-diffusion-xl-v1-refiner",
    kohya_version="sdxl_refiner_v1-0",
)

FAMILIES = {f.name: f for f in (SD1, SD2, SD2_V, SDXL, SDXL_REFINER)}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UserError(f"unknown model family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(
    unet: Mapping[str, Any], text_encoder: Mapping[str, Any] | None, scheduler: Mapping[str, Any] | None = None
) -> Family:
    """The family of a model from its configs: ``text_time`` conditioning is SDXL (a refiner has no first
    tower); otherwise CLIP ViT-L's quick-GELU tower is SD 1.x and OpenCLIP's GELU tower SD 2.x, whose
    v-prediction models are told apart by the scheduler's ``prediction_type``."""
    if unet.get("addition_embed_type") == "text_time":
        return SDXL if text_encoder is not None else SDXL_REFINER
    if text_encoder is None:
        raise UserError("a model without text_time conditioning needs a text encoder (SD 1.x / 2.x)")
    if text_encoder.get("hidden_act", "quick_gelu") == "quick_gelu":
        return SD1
    v = (scheduler or {}).get("prediction_type") == "v_prediction"
    return SD2_V if v else SD2


def family_of_keys(keys: Iterable[str]) -> Family | None:
    """The family a single LDM/SGM-layout checkpoint belongs to, from its text-tower keys (None: no tower found).
    SD 2.x here means the epsilon kind: a single file does not say what its UNet predicts."""
    keys = list(keys)
    for family in (SDXL, SDXL_REFINER, SD1, SD2):
        if all(any(k.startswith(p) for k in keys) for p in family.ldm_text_prefixes):
            return family
    return None


def unet_inputs(
    config: Mapping[str, Any],
    time_ids: int,
    batch: int,
    latent_height: int,
    latent_width: int,
    make: Callable[..., Any],
    *,
    tokens: int = 77,
) -> dict[str, Any]:
    """Keyword inputs of one UNet call (``timestep`` aside) with tensors from ``make(*shape)`` (random, empty on the
    meta device, ...): what tracing, FLOP counting and timing feed a UNet of a family with ``time_ids`` numbers
    (0: no ``added_cond_kwargs``). The pooled width is what the UNet's projection leaves after the time ids."""
    inputs = {
        "sample": make(batch, config["in_channels"], latent_height, latent_width),
        "encoder_hidden_states": make(batch, tokens, config["cross_attention_dim"]),
        "added_cond_kwargs": None,
    }
    if time_ids:
        pooled = config["projection_class_embeddings_input_dim"] - time_ids * config["addition_time_embed_dim"]
        inputs["added_cond_kwargs"] = {"text_embeds": make(batch, pooled), "time_ids": make(batch, time_ids)}
    return inputs


def time_ids_of(config: Mapping[str, Any]) -> int:
    """How many micro-conditioning numbers a base model's UNet of this config takes (0 without ``text_time``). A
    refiner's UNet config looks the same: where one may come, ask its family (``Components.family.time_ids``)."""
    return SDXL.time_ids if config.get("addition_embed_type") == "text_time" else 0
