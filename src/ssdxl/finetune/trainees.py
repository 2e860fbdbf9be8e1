"""What a fine-tuning mode trains, how it checkpoints, and what file it hands over.

One class per kind of trainable state: peft LoRA layers (``lora``, ``dreambooth``, ``lcm``), whole
modules (``full``, ``dreambooth --no-lora``), new token vectors (``embedding``) or a ControlNet beside the
frozen model (``controlnet``). The training loop only sees ``parameters``, ``state_dict`` /
``load_state_dict``, ``after_step``, ``save``, and the modules it places and wraps (``own_modules``, ``network``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ssdxl.adapters.embeddings import embedding_keys
from ssdxl.adapters.export import architecture_metadata, save_embedding, save_lora
from ssdxl.conditioning.prompt import TOKENIZERS
from ssdxl.errors import UserError, first_line
from ssdxl.finetune.config import FinetuneConfig
from ssdxl.models.components import Components

UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # diffusers' SDXL LoRA scripts
# LCM-LoRA patches every block, not only attention (diffusers' train_lcm_distill_lora_sdxl.py): jumping to
# the end of the schedule changes what the resnets compute too.
LCM_LORA_TARGETS = [*UNET_LORA_TARGETS, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2",
                    "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]  # fmt: skip
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# The ControlNet's map encoder: one stride-2 stage per VAE halving after the first (SDXL's VAE: 8x, four stages).
CONDITIONING_CHANNELS = (16, 32, 96, 256)
CONTROLNET_INFO = "ssdxl.json"  # beside the diffusers files: the base model and the map kind, for ssdxl


class Trainee:
    """The trainable part of ``parts``; everything else is frozen."""

    def __init__(self, parts: Components, cfg: FinetuneConfig) -> None:
        self.parts = parts
        self.cfg = cfg
        for module in parts.modules().values():
            module.requires_grad_(False).eval()

    trains_whole_modules = False  # every weight of ``train_modules`` trains (else a few parameters on them)
    network_name = "unet"  # the objective's attribute holding ``network`` (the loop swaps in accelerate's wrapper)

    @property
    def network(self) -> torch.nn.Module:
        """The module gradients flow into, synchronised over processes by accelerate."""
        return self.parts.unet

    def own_modules(self) -> list[torch.nn.Module]:
        """Modules the trainee adds beside the model's parts; the loop places and casts them like the parts."""
        return []

    @property
    def trains_text(self) -> bool:
        """Whether gradients flow through the text towers (otherwise they run without autograd)."""
        return self.cfg.train_text_encoder

    def train_modules(self) -> list[torch.nn.Module]:
        """Modules put in training mode (dropout, gradient checkpointing): the UNet, and the towers if they train."""
        towers = [getattr(self.parts, t) for t in self.parts.family.towers] if self.trains_text else []
        return [self.parts.unet, *towers]

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        found = []
        for part, module in self.parts.modules().items():
            found += [(f"{part}.{n}", p) for n, p in module.named_parameters() if p.requires_grad]
        return found

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.named_parameters()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, p in self.named_parameters():
            p.copy_(state[name])

    def after_step(self) -> None:
        """Called after every optimiser step."""

    def prompt(self, caption: str) -> str:
        """A caption as the text towers should read it."""
        return caption

    def save(self, metadata: dict[str, str]) -> Path:
        raise NotImplementedError


class LoraTrainee(Trainee):
    """peft LoRA layers on the UNet's attention projections (and the CLIP towers' with ``train_text_encoder``)."""

    def __init__(self, parts: Components, cfg: FinetuneConfig, adapter: str = "default") -> None:
        super().__init__(parts, cfg)
        self.adapter = adapter
        add_lora(parts, cfg.rank, cfg.alpha or cfg.rank, text=cfg.train_text_encoder, adapter=adapter,
                 unet_targets=LCM_LORA_TARGETS if cfg.mode == "lcm" else UNET_LORA_TARGETS)  # fmt: skip

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in super().named_parameters() if f".{self.adapter}." in n]

    def save(self, metadata: dict[str, str]) -> Path:
        return save_lora(self.parts, self.cfg.out_path, fmt=self.cfg.lora_format, adapter=self.adapter,
                         metadata=metadata, dtype=getattr(torch, self.cfg.save_dtype))  # fmt: skip


def add_lora(
    parts: Components,
    rank: int,
    alpha: float,
    *,
    text: bool,
    adapter: str = "default",
    unet_targets: list[str] = UNET_LORA_TARGETS,
) -> None:
    """Put a trainable peft LoRA ``adapter`` on ``parts`` (B starts at zero: the model is unchanged at step 0)."""
    from peft import LoraConfig

    def config(targets: list[str]) -> LoraConfig:
        return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)

    parts.unet.add_adapter(config(unet_targets), adapter_name=adapter)
    if text:
        for tower in parts.family.towers:
            getattr(parts, tower).add_adapter(config(TEXT_LORA_TARGETS), adapter_name=adapter)


class FullTrainee(Trainee):
    """Every UNet weight (and the CLIP towers' with ``train_text_encoder``); the output is a diffusers folder."""

    trains_whole_modules = True

    def __init__(self, parts: Components, cfg: FinetuneConfig) -> None:
        super().__init__(parts, cfg)
        for module in self.train_modules():
            module.requires_grad_(True)

    def save(self, metadata: dict[str, str]) -> Path:
        from ssdxl.training.export import export_model

        return export_model(self.parts, self.cfg.out_path, self.cfg.save_dtype)


class EmbeddingTrainee(Trainee):
    """New token vectors in every CLIP tower of the model (textual inversion); every other row of the tables is kept.

    The towers' input-embedding tables train as a whole (diffusers' recipe), and after each step every
    row but the new ones is put back, so only the new word changes.
    """

    def __init__(self, parts: Components, cfg: FinetuneConfig) -> None:
        super().__init__(parts, cfg)
        token = cfg.embedding_token
        self.tokens = [token] + [f"{token}_{i}" for i in range(1, cfg.vectors)]
        self.ids: dict[str, list[int]] = {}
        self.original: dict[str, torch.Tensor] = {}
        self.keys = embedding_keys(parts.family)  # the file's key per tower: clip_l / clip_g, or emb_params
        for tower in parts.family.towers:
            tokenizer = getattr(parts, TOKENIZERS[tower])
            if any(t in tokenizer.get_vocab() for t in self.tokens):
                raise UserError(f"--token {token!r} is already a word of this model's vocabulary; choose another")
            encoder = getattr(parts, tower)
            init = _init_vector(tokenizer, encoder, cfg.init_word)
            tokenizer.add_tokens(self.tokens)
            encoder.resize_token_embeddings(len(tokenizer))
            table = encoder.get_input_embeddings().weight
            ids = tokenizer.convert_tokens_to_ids(self.tokens)
            with torch.no_grad():
                table[ids] = init
            table.requires_grad_(True)
            self.ids[tower] = ids
            self.original[tower] = table.detach().clone()

    trains_whole_modules = True  # the towers stay float32: a float32 token table feeds their LayerNorms

    @property
    def trains_text(self) -> bool:
        return True

    def train_modules(self) -> list[torch.nn.Module]:
        return [getattr(self.parts, t) for t in self.parts.family.towers]

    def prompt(self, caption: str) -> str:
        """A caption as the towers read it: ``--replace``'s word becomes the token, a caption without the
        token gets it in front, and the token is spelled out to all its vectors (``tok tok_1 tok_2``)."""
        token = self.tokens[0]
        if self.cfg.replace:
            caption = re.sub(rf"(?<!\w){re.escape(self.cfg.replace)}(?!\w)", token, caption)
        if not re.search(rf"(?<!\w){re.escape(token)}(?!\w)", caption):
            caption = f"{token}, {caption}" if caption else token
        return re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", " ".join(self.tokens), caption)

    def vectors(self) -> dict[str, torch.Tensor]:
        return {
            self.keys[tower]: getattr(self.parts, tower).get_input_embeddings().weight[ids].detach().clone()
            for tower, ids in self.ids.items()
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.vectors()

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for tower, ids in self.ids.items():
            table = getattr(self.parts, tower).get_input_embeddings().weight
            table[ids] = state[self.keys[tower]].to(table.device, table.dtype)

    @torch.no_grad()
    def after_step(self) -> None:
        for tower, ids in self.ids.items():
            table = getattr(self.parts, tower).get_input_embeddings().weight
            original = self.original[tower]
            if original.device != table.device:  # the loop moved the towers after this trainee was made
                original = self.original[tower] = original.to(table.device, table.dtype)
            keep = torch.ones(len(table), dtype=torch.bool, device=table.device)
            keep[ids] = False
            table[keep] = original[keep]

    def save(self, metadata: dict[str, str]) -> Path:
        meta = {**metadata, "ssdxl.token": self.tokens[0]}
        return save_embedding(self.vectors(), self.cfg.out_path, meta, getattr(torch, self.cfg.save_dtype))


def _init_vector(tokenizer, encoder, word: str) -> torch.Tensor:
    """The starting vector: the mean of ``word``'s token vectors, or of the whole vocabulary."""
    table = encoder.get_input_embeddings().weight.detach()
    if not word:
        return table.mean(0)
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"--init-word {word!r} has no tokens")
    return table[ids].mean(0)


class ControlNetTrainee(Trainee):
    """A ControlNet beside the frozen model, every weight trained: a copy of the UNet's encoder (diffusers'
    ``ControlNetModel.from_unet``, as its SDXL ControlNet script starts) or ``--controlnet-init``'s network.
    Written as a diffusers ControlNet folder, with ``ssdxl.json`` naming the base model."""

    trains_whole_modules = True
    network_name = "controlnet"

    def __init__(self, parts: Components, cfg: FinetuneConfig) -> None:
        super().__init__(parts, cfg)
        self.controlnet = _initial_controlnet(parts, cfg.controlnet_init)
        self.controlnet.requires_grad_(True)

    @property
    def network(self) -> torch.nn.Module:
        return self.controlnet

    def own_modules(self) -> list[torch.nn.Module]:
        return [self.controlnet]

    def train_modules(self) -> list[torch.nn.Module]:
        return [self.controlnet]

    def named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"controlnet.{n}", p) for n, p in self.controlnet.named_parameters()]

    def save(self, metadata: dict[str, str]) -> Path:
        out = self.cfg.out_path
        stored = copy.deepcopy(self.controlnet).to(getattr(torch, self.cfg.save_dtype))  # casting in place would round
        stored.save_pretrained(out, safe_serialization=True)
        (out / CONTROLNET_INFO).write_text(json.dumps(metadata, indent=2) + "\n")
        return out


def _initial_controlnet(parts: Components, init: str):
    """``init``'s ControlNet, checked against the UNet it must feed, or a fresh one copied from the UNet."""
    from diffusers import ControlNetModel

    unet = parts.unet
    if init:
        try:
            net = ControlNetModel.from_pretrained(init, torch_dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise UserError(f"--controlnet-init {init!r} is not a diffusers ControlNet folder: "
                            f"{first_line(exc)}") from None  # fmt: skip
        for key in ("block_out_channels", "cross_attention_dim", "down_block_types", "in_channels"):
            if _as_list(net.config[key]) != _as_list(unet.config[key]):
                raise UserError(f"--controlnet-init {init!r} does not fit this model: its {key} is "
                                f"{net.config[key]}, the UNet's {unet.config[key]}")  # fmt: skip
        return net
    stages = int(math.log2(parts.vae_scale)) + 1
    if stages > len(CONDITIONING_CHANNELS):
        raise UserError(f"a ControlNet's map encoder downsamples at most 8x; this model's VAE downsamples "
                        f"{parts.vae_scale}x")  # fmt: skip
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS[:stages])


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def make_trainee(parts: Components, cfg: FinetuneConfig) -> Trainee:
    if cfg.mode == "embedding":
        return EmbeddingTrainee(parts, cfg)
    if cfg.mode == "controlnet":
        return ControlNetTrainee(parts, cfg)
    if cfg.lora:
        return LoraTrainee(parts, cfg)
    return FullTrainee(parts, cfg)


def output_metadata(parts: Components, cfg: FinetuneConfig, step: int) -> dict[str, Any]:
    """What the file says about itself: the kohya-ss keys A1111 lists, the model-spec architecture, and ssdxl's own."""
    meta = {
        "ss_base_model_version": parts.family.kohya_version,
        **architecture_metadata(parts.family),
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha or cfg.rank),
        "ss_steps": str(step),
        "ssdxl.mode": cfg.mode,
        "ssdxl.base_model": parts.name,
    }
    if cfg.mode == "lcm":
        meta["ssdxl.few_step"] = "lcm"
    if cfg.mode == "controlnet" and cfg.data in ("", "shapes"):
        meta["ssdxl.control"] = cfg.control_kind
    if not cfg.lora:
        meta = {k: v for k, v in meta.items() if k.startswith("ssdxl.")}
    return meta
