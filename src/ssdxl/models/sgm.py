"""Single-file checkpoints in the original layouts (LDM for SD 1.x / 2.x, SGM for SDXL), to and from diffusers.

Most community models ship as one ``.safetensors`` file in the layout of the repo their family was trained in,
which ComfyUI and AUTOMATIC1111 load: CompVis/Stability's ``stablediffusion`` ("LDM") for SD 1.x / 2.x,
Stability's ``generative-models`` ("SGM") for SDXL. The two name the UNet and VAE alike and differ in where
the text towers live (each family's ``ldm_text_prefixes`` in ``ssdxl.models.families``):

* ``model.diffusion_model.*``               UNet (``input_blocks`` / ``middle_block`` / ``output_blocks``)
* ``first_stage_model.*``                   VAE (LDM names; mid attention as 1x1 convs)
* ``cond_stage_model.transformer.*``        SD 1.x CLIP ViT-L, Hugging Face names (some files lack ``text_model.``)
* ``cond_stage_model.model.*``              SD 2.x OpenCLIP ViT-H, OpenCLIP names
* ``conditioner.embedders.0.transformer.*`` SDXL CLIP ViT-L, Hugging Face names (base models only)
* ``conditioner.embedders.N.model.*``       SDXL OpenCLIP ViT-bigG (N = 1, or 0 for the refiner)

SD 2.x reads OpenCLIP ViT-H's penultimate layer, so diffusers keeps 23 of its 24 blocks and no projection.
Files get the 24th block back as zeros (a pre-norm residual block with zero weights is the identity, and the
penultimate output never reads it) and an identity ``text_projection``, so they have the released key set that
AUTOMATIC1111, ComfyUI and diffusers expect; loading drops both again. What a UNet predicts is not in its
weights: files carry ComfyUI's empty ``v_pred`` / ``ztsnr`` marker tensors for that (``schedule_markers``).

Every component is converted by one table of ``Rule`` s written in the diffusers -> file direction; the
other direction uses the same table inverted, so the two can never drift apart. The tables are generated
from the block structure (levels, resnets per level, which blocks have attention), read from the state
dict keys or the UNet config, never from hard-coded sizes, so any transformer depth, SSD-1B's asymmetric
up/down depths, a mid block without attention, the refiner's four levels and tiny scaled copies all work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

from ssdxl.errors import UserError
from ssdxl.models.families import SDXL, SDXL_REFINER, Family, family_of_keys

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# ComfyUI's marker tensors (empty) for what weights cannot show: the UNet predicts v; it was trained with zero
# terminal SNR.
V_PRED_KEY = "v_pred"
ZTSNR_KEY = "ztsnr"

# Single-file keys with no diffusers counterpart, dropped on load: OpenCLIP's contrastive temperature (unused
# for text conditioning) and CLIP's position_ids buffer (recreated below when transformers wants it).
IGNORED_SGM_SUFFIXES = (".logit_scale", ".position_ids")

# Leaf renames inside one module, diffusers name -> SGM name (identity when absent).
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP_LAYER = {
    "self_attn.in_proj.weight": "attn.in_proj_weight",  # q/k/v fused beforehand, see _fuse_qkv
    "self_attn.in_proj.bias": "attn.in_proj_bias",
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def _conv1x1_to_sgm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(*t.shape, 1, 1) if t.ndim == 2 else t


def _conv1x1_to_diffusers(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1) if t.ndim == 4 else t


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.T.contiguous()


# Value changes between layouts: name -> (diffusers -> SGM, SGM -> diffusers).
TRANSFORMS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    # The LDM VAE's mid attention projects with 1x1 convs where diffusers uses linear layers.
    "conv1x1": (_conv1x1_to_sgm, _conv1x1_to_diffusers),
    # OpenCLIP applies ``x @ text_projection``; a torch Linear stores the transpose.
    "transpose": (_transpose, _transpose),
}


@dataclass(frozen=True)
class Rule:
    """Module ``diffusers`` (a key prefix) is module ``sgm``; ``leaves`` rename what follows the prefix."""

    diffusers: str
    sgm: str
    leaves: Mapping[str, str] = field(default_factory=dict)
    transform: str | None = None


# --------------------------------------------------------------------------------------------- engine


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _longest_prefix(parts: list[str], table: Mapping[str, Any]) -> tuple[int, Any] | None:
    """The longest dotted prefix of ``parts`` that is a key of ``table`` (the empty prefix included)."""
    for n in range(len(parts), -1, -1):
        hit = table.get(".".join(parts[:n]))
        if hit is not None:
            return n, hit
    return None


def _convert(sd: Mapping[str, torch.Tensor], rules: Iterable[Rule], to_sgm: bool) -> dict[str, torch.Tensor]:
    """Rename every key by the rules, read forwards (to SGM) or inverted (to diffusers)."""
    index: dict[str, tuple[str, dict[str, str], str | None]] = {}
    for rule in rules:
        src, dst = (rule.diffusers, rule.sgm) if to_sgm else (rule.sgm, rule.diffusers)
        leaves = dict(rule.leaves) if to_sgm else {v: k for k, v in rule.leaves.items()}
        index[src] = (dst, leaves, rule.transform)
    out: dict[str, torch.Tensor] = {}
    unmatched = []
    for key, tensor in sd.items():
        parts = key.split(".")
        hit = _longest_prefix(parts, index)
        if hit is None:
            unmatched.append(key)
            continue
        n, (dst, leaves, transform) = hit
        rest = parts[n:]
        leaf = _longest_prefix(rest, leaves) if rest else None
        if leaf is not None and leaf[0] > 0:
            rest = [leaf[1], *rest[leaf[0] :]]
        out[_join(dst, *rest)] = TRANSFORMS[transform][0 if to_sgm else 1](tensor) if transform else tensor
    if unmatched:
        layout = "diffusers" if to_sgm else "single-file"
        raise UserError(
            f"{len(unmatched)} tensor(s) not part of a Stable Diffusion {layout} model, e.g. {unmatched[0]!r}"
        )
    return out


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (matched at the start of each key)."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _count(keys: Iterable[str], pattern: str) -> int:
    found = _indices(keys, pattern)
    return found[-1] + 1 if found else 0


# ------------------------------------------------------------------------------------------------ UNet


@dataclass(frozen=True)
class Level:
    resnets: int
    attention: bool
    sampler: bool  # a down- or upsampler closes the level


@dataclass(frozen=True)
class UNetLayout:
    """What decides the SGM block numbering; transformer depth does not (names inside are identical)."""

    down: tuple[Level, ...]
    mid: tuple[str, ...]  # diffusers mid_block children in SGM order, e.g. ("resnets.0", "attentions.0", ...)
    up: tuple[Level, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNetLayout:
        down_types = list(config["down_block_types"])
        up_types = list(config["up_block_types"])
        per_level = config.get("layers_per_block", 2)
        layers = [per_level] * len(down_types) if isinstance(per_level, int) else list(per_level)
        last = len(down_types) - 1
        down = tuple(Level(layers[i], "CrossAttn" in t, i < last) for i, t in enumerate(down_types))
        up = tuple(
            Level(n + 1, "CrossAttn" in t, i < last)
            for i, (n, t) in enumerate(zip(layers[::-1], up_types, strict=True))
        )
        mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        mids = {
            "UNetMidBlock2DCrossAttn": ("resnets.0", "attentions.0", "resnets.1"),
            "UNetMidBlock2D": ("resnets.0",),  # diffusers builds it with num_layers=0, no attention
            None: (),
        }
        if mid_type not in mids:
            raise UserError(f"unsupported UNet mid block {mid_type!r} for a single-file checkpoint")
        return cls(down, mids[mid_type], up)

    @classmethod
    def from_diffusers_keys(cls, keys: Iterable[str]) -> UNetLayout:
        keys = list(keys)

        def levels(kind: str, sampler: str) -> tuple[Level, ...]:
            return tuple(
                Level(
                    _count(keys, rf"{kind}\.{i}\.resnets\.(\d+)\."),
                    any(k.startswith(f"{kind}.{i}.attentions.") for k in keys),
                    any(k.startswith(f"{kind}.{i}.{sampler}.") for k in keys),
                )
                for i in range(_count(keys, rf"{kind}\.(\d+)\."))
            )

        resnets = _count(keys, r"mid_block\.resnets\.(\d+)\.")
        attentions = _count(keys, r"mid_block\.attentions\.(\d+)\.")
        mid = [f"resnets.{i}" for i in range(resnets)]
        for i in range(attentions):  # diffusers runs resnet 0, then (attention i, resnet i+1) pairs
            mid.insert(2 * i + 1, f"attentions.{i}")
        return cls(levels("down_blocks", "downsamplers"), tuple(mid), levels("up_blocks", "upsamplers"))


def unet_rules(layout: UNetLayout) -> list[Rule]:
    rules = [
        Rule("time_embedding.linear_1", "time_embed.0"),
        Rule("time_embedding.linear_2", "time_embed.2"),
        Rule("add_embedding.linear_1", "label_emb.0.0"),
        Rule("add_embedding.linear_2", "label_emb.0.2"),
        Rule("conv_in", "input_blocks.0.0"),
        Rule("conv_norm_out", "out.0"),
        Rule("conv_out", "out.2"),
    ]
    n = 1  # input_blocks.0 is conv_in; then one block per resnet (+ its attention) and per downsampler
    for i, level in enumerate(layout.down):
        for j in range(level.resnets):
            rules.append(Rule(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", UNET_RESNET))
            if level.attention:
                rules.append(Rule(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1"))
            n += 1
        if level.sampler:
            rules.append(Rule(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{n}.0.op"))
            n += 1
    for k, child in enumerate(layout.mid):
        leaves = UNET_RESNET if child.startswith("resnets.") else {}
        rules.append(Rule(f"mid_block.{child}", f"middle_block.{k}", leaves))
    n = 0  # the upsampler joins the level's last output block, after its attention if any
    for i, level in enumerate(layout.up):
        for j in range(level.resnets):
            rules.append(Rule(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", UNET_RESNET))
            if level.attention:
                rules.append(Rule(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1"))
            n += 1
        if level.sampler:
            slot = 2 if level.attention else 1
            rules.append(Rule(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{n - 1}.{slot}.conv"))
    return rules


# ------------------------------------------------------------------------------------------------- VAE


def vae_rules(levels: int, layers: int) -> list[Rule]:
    """AutoencoderKL; the LDM decoder numbers its levels bottom-up, diffusers top-down."""
    rules = [Rule(name, name) for name in ("quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        rules += [
            Rule(f"{part}.conv_in", f"{part}.conv_in"),
            Rule(f"{part}.conv_out", f"{part}.conv_out"),
            Rule(f"{part}.conv_norm_out", f"{part}.norm_out"),
            Rule(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET),
            Rule(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET),
            Rule(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTENTION, "conv1x1"),
        ]
    for i in range(levels):
        for j in range(layers):
            rules.append(Rule(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET))
        up = levels - 1 - i
        for j in range(layers + 1):
            rules.append(Rule(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{up}.block.{j}", VAE_RESNET))
        if i < levels - 1:
            rules.append(Rule(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"))
            rules.append(Rule(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{up}.upsample.conv"))
    return rules


# --------------------------------------------------------------------------------------- text encoders

# Every tower is handled in a canonical Hugging Face form, "text_model.*" (+ "text_projection.weight").
CLIP_L_RULES = [Rule("text_model", "text_model")]  # files keep Hugging Face names under "transformer."


@dataclass(frozen=True)
class Tower:
    """One text encoder: its ``Components`` slot and the prefix of its tensors in a single file."""

    slot: str
    prefix: str

    @property
    def openclip(self) -> bool:
        """OpenCLIP names (prefix ``...model.``), else Hugging Face ones (``...transformer.``)."""
        return self.prefix.endswith(".model.")

    @property
    def projection(self) -> bool:
        """A ``CLIPTextModelWithProjection``: SDXL's OpenCLIP tower, whose pooled projection the UNet reads."""
        return self.slot == "text_encoder_2"

    @property
    def penultimate(self) -> bool:
        """SD 2.x's tower: diffusers keeps OpenCLIP's blocks up to the penultimate one, and no projection."""
        return self.openclip and not self.projection


def towers(family: Family) -> list[Tower]:
    return [Tower(slot, prefix) for slot, prefix in zip(family.towers, family.ldm_text_prefixes, strict=True)]


def openclip_rules(layers: int) -> list[Rule]:
    rules = [
        Rule("text_model.embeddings.token_embedding", "token_embedding"),
        Rule("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        Rule("text_model.final_layer_norm", "ln_final"),
        Rule("text_projection.weight", "text_projection", transform="transpose"),
    ]
    rules += [
        Rule(f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}", OPENCLIP_LAYER) for i in range(layers)
    ]
    return rules


def _fuse_qkv(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Separate q/k/v projections -> one ``self_attn.in_proj`` (OpenCLIP's nn.MultiheadAttention)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        head, sep, param = key.rpartition("_proj.")
        if sep and head.endswith(("self_attn.q", "self_attn.k", "self_attn.v")):
            if head.endswith(".q"):
                base = head[:-2]
                parts = [sd[f"{base}.{x}_proj.{param}"] for x in "qkv"]
                out[f"{base}.in_proj.{param}"] = torch.cat(parts, dim=0)
            continue
        out[key] = tensor
    return out


def _split_qkv(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``_fuse_qkv``; the pieces are cloned so they share no storage (safetensors refuses that)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        base, sep, param = key.rpartition(".in_proj.")
        if sep:
            for name, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"{base}.{name}_proj.{param}"] = part.clone()
        else:
            out[key] = tensor
    return out


@cache
def _hf_text_layout(with_projection: bool) -> tuple[bool, bool]:
    """(keys start with "text_model.", position_ids is saved) for the installed transformers.

    transformers >= 5.6 dropped the ``text_model.`` level of CLIPTextModel (not of the projection
    variant) and older releases saved ``position_ids``; checked on a meta-device toy model.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=8, intermediate_size=8, num_attention_heads=1, num_hidden_layers=1, projection_dim=8
    )
    with torch.device("meta"):
        model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    keys = list(model.state_dict())
    return any(k.startswith("text_model.") for k in keys), any(k.endswith("position_ids") for k in keys)


def _to_canonical_text(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("text_model.") for k in sd):
        return dict(sd)
    return {k if k.startswith("text_projection") else f"text_model.{k}": v for k, v in sd.items()}


def _from_canonical_text(sd: dict[str, torch.Tensor], with_projection: bool) -> dict[str, torch.Tensor]:
    """The form ``load_state_dict(strict=True)`` of the installed transformers expects."""
    prefixed, wants_ids = _hf_text_layout(with_projection)
    ids_key = "text_model.embeddings.position_ids"
    if not wants_ids:
        sd.pop(ids_key, None)
    elif ids_key not in sd:
        positions = sd["text_model.embeddings.position_embedding.weight"].shape[0]
        sd[ids_key] = torch.arange(positions).unsqueeze(0)
    if prefixed:
        return sd
    return {k.removeprefix("text_model."): v for k, v in sd.items()}


def _text_to_file(sd: Mapping[str, torch.Tensor], tower: Tower) -> dict[str, torch.Tensor]:
    canonical = _to_canonical_text(sd)
    if not tower.openclip:
        return _convert(canonical, CLIP_L_RULES, to_sgm=True)
    fused = _fuse_qkv({k: v for k, v in canonical.items() if not k.endswith("position_ids")})
    layers = _count(fused, r"text_model\.encoder\.layers\.(\d+)\.")
    if tower.penultimate:
        fused |= _released_extras(fused, layers)
        layers += 1
    return _convert(fused, openclip_rules(layers), to_sgm=True)


def _released_extras(sd: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """What released SD 2.x files hold beyond diffusers' tower: a last block, here zeros (the identity of a
    pre-norm residual block), and a projection, here the identity (SD 2.x conditioning reads neither)."""
    last, extra = f"text_model.encoder.layers.{layers - 1}.", f"text_model.encoder.layers.{layers}."
    out = {extra + k[len(last) :]: torch.zeros_like(v) for k, v in sd.items() if k.startswith(last)}
    norm = sd["text_model.final_layer_norm.weight"]
    out["text_projection.weight"] = torch.eye(norm.shape[0], dtype=norm.dtype, device=norm.device)
    return out


def _text_from_file(sd: Mapping[str, torch.Tensor], tower: Tower) -> dict[str, torch.Tensor]:
    if not tower.openclip:
        return _from_canonical_text(_convert(_to_canonical_text(sd), CLIP_L_RULES, to_sgm=False), tower.projection)
    layers = _count(sd, r"transformer\.resblocks\.(\d+)\.")
    if tower.penultimate:  # drop the released extras (see _released_extras)
        layers -= 1
        extra = f"transformer.resblocks.{layers}."
        sd = {k: v for k, v in sd.items() if not k.startswith(extra) and k != "text_projection"}
    return _from_canonical_text(_split_qkv(_convert(sd, openclip_rules(layers), to_sgm=False)), tower.projection)


# ---------------------------------------------------------------------------------------------- public


def sgm_from_components(
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]], family: Family | None = None
) -> dict[str, torch.Tensor]:
    """One single-file state dict (LDM or SGM layout, by ``family``) from diffusers/transformers component
    state dicts: "unet", "vae" and the family's towers.

    Without ``family`` the towers present tell SDXL base from the refiner; SD 1.x and 2.x fill the same one
    slot with towers named alike, so their family must be given. Tensors are not copied where a rename suffices.
    """
    family = family or (SDXL if "text_encoder" in state_dicts else SDXL_REFINER)
    missing = [name for name in ("unet", "vae", *family.towers) if name not in state_dicts]
    if missing:
        raise ValueError(f"sgm_from_components needs state dicts for: {', '.join(missing)}")
    unet, vae = state_dicts["unet"], state_dicts["vae"]
    out = _prefixed(UNET_PREFIX, _convert(unet, unet_rules(UNetLayout.from_diffusers_keys(unet)), to_sgm=True))
    layout = (
        _count(vae, r"encoder\.down_blocks\.(\d+)\."),
        _count(vae, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
    )
    out |= _prefixed(VAE_PREFIX, _convert(vae, vae_rules(*layout), to_sgm=True))
    for tower in towers(family):
        out |= _prefixed(tower.prefix, _text_to_file(state_dicts[tower.slot], tower))
    return out


def components_from_sgm(
    sd: Mapping[str, torch.Tensor], unet_config: Mapping[str, Any]
) -> dict[str, dict[str, torch.Tensor]]:
    """Component state dicts ("unet", "vae" and the towers of the family the keys show) from a single-file
    checkpoint, ready for ``load_state_dict(strict=True)`` on models built from the configs.

    The VAE and text encoder sizes come from the keys; ``unet_config`` gives the UNet block structure
    and is checked against the checkpoint first. Keys outside the components (EMA copies, noise schedules,
    markers) are ignored, as are ``logit_scale`` and ``position_ids`` (see ``IGNORED_SGM_SUFFIXES``).
    """
    from ssdxl.models.detect import check_unet_structure

    check_unet_structure(sd.keys(), unet_config)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {
            k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and not k.endswith(IGNORED_SGM_SUFFIXES)
        }

    family, vae = family_of_keys(sd), part(VAE_PREFIX)
    if family is None or not vae:
        raise UserError(
            "this single-file checkpoint has no VAE (first_stage_model.*) or no text encoder (cond_stage_model.* "
            "or conditioner.embedders.*); only complete checkpoints can be converted"
        )
    out = {"unet": _convert(part(UNET_PREFIX), unet_rules(UNetLayout.from_config(unet_config)), to_sgm=False)}
    layout = (_count(vae, r"encoder\.down\.(\d+)\."), _count(vae, r"encoder\.down\.0\.block\.(\d+)\."))
    out["vae"] = _convert(vae, vae_rules(*layout), to_sgm=False)
    for tower in towers(family):
        out[tower.slot] = _text_from_file(part(tower.prefix), tower)
    return out


def schedule_markers(scheduler_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ComfyUI's empty marker tensors for what a file's weights cannot show: v-prediction and zero terminal SNR."""
    markers: dict[str, torch.Tensor] = {}
    if scheduler_config.get("prediction_type") == "v_prediction":
        markers[V_PRED_KEY] = torch.tensor([])
    if scheduler_config.get("rescale_betas_zero_snr"):
        markers[ZTSNR_KEY] = torch.tensor([])
    return markers


def _prefixed(prefix: str, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}
