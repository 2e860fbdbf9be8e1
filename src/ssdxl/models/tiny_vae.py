"""Tiny VAEs: diffusers' ``AutoencoderTiny`` (madebyollin's TAESD for SD 1.x / 2.x latents, TAESDXL for SDXL's, or one
``ssdxl train tiny-vae`` distilled from a model's own VAE) for step previews and the opt-in fast final decode
(``--fast-decode``).

A tiny VAE reads the UNet's latents as they are. ``AutoencoderTiny.config.scaling_factor`` is 1.0 and diffusers'
pipelines decode ``latents / scaling_factor`` (SD3 / Flux ones ``+ shift_factor``), so none of the model's own
latent scale is undone first, as it is for an ``AutoencoderKL`` (``vae.to_vae``); ``decode`` below is that formula.
``latent_magnitude`` and ``latent_shift`` only pack latents into 8-bit images (``scale_latents``); decoding never
reads them.

Sources: a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``), or such a repo id on the
Hugging Face hub (``madebyollin/taesdxl``: from the local cache, downloaded only where the network allows), or a
single file: the original TAESD layout (``taesdxl_decoder.safetensors``: the decoder as a bare
``nn.Sequential``, keys ``1.weight``, ``3.conv.0.weight``, ...; an encoder file starts at ``0.weight``; both parts
may come in one file under ``taesd_decoder.`` / ``taesd_encoder.``) or diffusers names (``decoder.layers.…``). A
decoder-only file decodes only. Pickled files (``.pth``, ...) load only with ``allow_pickle``.

The weights cannot tell TAESD from TAESDXL: the same network, trained on other latents. The latent space a tiny VAE
was made for comes from ssdxl's record (``ssdxl.json``'s ``latent_space`` beside a folder's config, a single file's
``ssdxl.latent_space`` metadata), else from its name as madebyollin gives it (``taesdxl…``, ``taesd…``); one made
for other latents is refused with one line. An unnamed one is checked for latent channels and downscale only.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from ssdxl.errors import UserError, first_line
from ssdxl.models.loading import HF_ID, PICKLE_SUFFIXES, download, file_hash, from_pretrained, read_state_dict
from ssdxl.models.vae import latent_space, space_text

INFO_FILE = "ssdxl.json"  # beside a folder's config.json: {"latent_space": ..., "ssdxl.base_model": ...}
METADATA_KEY = "ssdxl.latent_space"  # a single file's safetensors metadata
TAESD_HOME = "https://github.com/madebyollin/taesd"
SD_SPACE = space_text(8, 4, 0.18215)
SDXL_SPACE = space_text(8, 4, 0.13025)


@dataclass(frozen=True)
class Known:
    """One of madebyollin's tiny VAEs: how its files are named, the latents it reads, where to get it."""

    pattern: re.Pattern
    name: str  # TAESD, TAESDXL
    latents: str  # the models whose latents it reads, for people
    space: str  # the same in ``vae.latent_space``'s words
    repo: str  # the diffusers folder on the hub
    file: str  # the original-layout decoder file


KNOWN = (
    Known(re.compile(r"taesdxl"), "TAESDXL", "SDXL", SDXL_SPACE, "madebyollin/taesdxl", "taesdxl_decoder.safetensors"),
    Known(re.compile(r"taesd(?![0-9a-z])"), "TAESD", "SD 1.x / 2.x", SD_SPACE, "madebyollin/taesd",
          "taesd_decoder.safetensors"),
)  # fmt: skip
_ORIGINAL_PREFIXES = {"taesd_decoder.": "decoder", "taesd_encoder.": "encoder", "decoder.": "decoder",
                      "encoder.": "encoder"}  # fmt: skip
_IGNORED = {"vae_scale", "vae_shift"}  # ComfyUI's combined files carry its own latent scale beside the weights


@dataclass
class TinyVAE:
    """A loaded tiny VAE and what records name it by: its file's name and A1111-style hash."""

    model: AutoencoderTiny
    name: str
    hash: str
    latent_space: str | None  # the latents it was made for, in ``vae.latent_space``'s words; None: not known
    has_encoder: bool = True  # False: loaded from a decoder-only file

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The UNet's latents [B, C, h, w] as pixels in [-1, 1] (float32), computed in ``dtype`` (default: the
        model's)."""
        dtype = dtype or self.model.dtype
        original = self.model.dtype
        if dtype != original:
            self.model.to(dtype)
        try:
            return decode(self.model, latents.to(self.model.device, dtype)).float()
        finally:
            if dtype != original:
                self.model.to(original)


def decode(model: AutoencoderTiny, latents: torch.Tensor) -> torch.Tensor:
    """What diffusers' pipelines do with an ``AutoencoderTiny``: ``decode(latents / scaling_factor + shift_factor)``."""
    config = model.config
    return model.decode(latents / config.scaling_factor + (config.get("shift_factor") or 0.0)).sample


def encode(model: AutoencoderTiny, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] as the UNet's latents (the inverse of ``decode``'s scaling)."""
    config = model.config
    return (model.encode(pixels).latents - (config.get("shift_factor") or 0.0)) * config.scaling_factor


def load_tiny_vae(
    source: str | Path, like: AutoencoderKL, *, dtype: torch.dtype, allow_pickle: bool = False, model: str = "MODEL"
) -> TinyVAE:
    """The tiny VAE at ``source`` (folder or single file), checked to read the latents of ``like`` (the model's VAE;
    ``model`` names the model in the hint to train one)."""
    path, text = Path(source).expanduser(), str(source)
    name = path.name
    if not path.exists() and HF_ID.match(text) and not text.startswith((".", "/")):  # madebyollin/taesdxl
        path, name = download(text, ("*.json", "*.safetensors")), text
    if path.is_dir():
        tiny, weights = _from_folder(path, dtype, allow_pickle)
        recorded, has_encoder = _read_info(path).get("latent_space"), True
    elif path.is_file():
        state, metadata = read_state_dict(path, allow_pickle=allow_pickle)
        tiny, has_encoder = _from_state_dict(state, path)
        recorded, weights = metadata.get(METADATA_KEY), path
    else:
        raise UserError(f"--tiny-vae {path} does not exist")
    space = recorded or named_space(path)
    check_fits(tiny, space, like, name, model)
    tiny = (tiny if tiny.dtype == dtype else tiny.to(dtype)).eval().requires_grad_(False)
    return TinyVAE(tiny, name, file_hash(weights), space, has_encoder)


def named_space(path: Path) -> str | None:
    """The latents madebyollin's name for a file or folder says it reads (a hub snapshot: its repo's folder name)."""
    path = path.resolve()
    names = [path.name] + ([path.parent.parent.name] if path.parent.name == "snapshots" else [])
    for name in names:
        for known in KNOWN:
            if known.pattern.search(name.lower()):
                return known.space
    return None


def tiny_space(tiny: AutoencoderTiny, scale: float | None = None) -> str:
    """A tiny VAE's latent channels and downscale (with ``scale``: the latent scale it was made for) in words."""
    config = tiny.config
    downscale = config.upsampling_scaling_factor ** (len(config.num_decoder_blocks) - 1)
    return space_text(downscale, config.latent_channels, scale)


def check_fits(tiny: AutoencoderTiny, space: str | None, like: AutoencoderKL, name: str, model: str = "MODEL") -> None:
    """Refuse a tiny VAE of other latents than ``like``'s: other channels or downscale, or (where its record or
    name says) another latent space of the same shape, such as TAESD on an SDXL model."""
    ours = latent_space(like)
    if tiny_space(tiny) != latent_space(like, scale=False):
        raise UserError(f"{name} is a tiny VAE for other latents ({tiny_space(tiny)}); this model's: {ours}")
    if space is not None and space != ours:
        raise UserError(
            f"{name} is a tiny VAE for {_latents(space, 'other')} latents ({space}); this model's are "
            f"{_latents(ours, 'its own')} latents ({ours}): {_source(ours, model, 'use')}"
        )


def missing_message(like: AutoencoderKL, model: str = "MODEL") -> str:
    """The one line for a fast decode asked of a model with no tiny VAE: where to get one for its latents."""
    ours = latent_space(like)
    where = _source(ours, model, "get")
    return f"fast decode needs a tiny VAE for this model's latents ({_latents(ours, ours)}): {where}"


def _source(space: str, model: str, verb: str) -> str:
    known = next((k for k in KNOWN if k.space == space), None)
    if known is None:
        return f"make one with `ssdxl train tiny-vae --model {model} --out DIR` and pass --tiny-vae DIR"
    return f"{verb} {known.name} ({known.file} from {TAESD_HOME}, or the diffusers folder {known.repo}) and pass " \
           "--tiny-vae PATH"  # fmt: skip


def _latents(space: str, unknown: str) -> str:
    return next((k.latents for k in KNOWN if k.space == space), unknown)


def _read_info(folder: Path) -> dict:
    info = folder / INFO_FILE
    if not info.is_file():
        return {}
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {info}: {first_line(exc)}") from None


def _from_folder(folder: Path, dtype: torch.dtype, allow_pickle: bool) -> tuple[AutoencoderTiny, Path]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"--tiny-vae {folder}: not a diffusers AutoencoderTiny folder (no config.json)")
    try:
        kind = json.loads(config_file.read_text()).get("_class_name")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {config_file}: {first_line(exc)}") from None
    if kind != "AutoencoderTiny":
        hint = " (a full VAE goes to --vae)" if kind == "AutoencoderKL" else ""
        raise UserError(f"--tiny-vae {folder}: its config is for {kind}, not AutoencoderTiny{hint}")
    safe = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not safe and not pickled:
        raise UserError(f"--tiny-vae {folder}: no weights (diffusion_pytorch_model.safetensors)")
    try:
        tiny = from_pretrained(AutoencoderTiny, folder, dtype, allow_pickle)  # refuses pickles unless allowed
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not load the tiny VAE in {folder}: {first_line(exc)}") from None
    return tiny, (safe or pickled)[0]


def _from_state_dict(state: dict[str, torch.Tensor], path: Path) -> tuple[AutoencoderTiny, bool]:
    """An AutoencoderTiny from one file: diffusers names as they are, the original layout renamed; its config read
    from the tensors' shapes and order."""
    state = {k: v for k, v in state.items() if k not in _IGNORED}
    if any(k.startswith(("decoder.layers.", "encoder.layers.")) for k in state):
        decoder = {k.removeprefix("decoder.layers."): v for k, v in state.items() if k.startswith("decoder.layers.")}
        encoder = {k.removeprefix("encoder.layers."): v for k, v in state.items() if k.startswith("encoder.layers.")}
        decoder = {_shift(k, +1): v for k, v in decoder.items()}  # back to the original numbering
    else:
        decoder, encoder = _original_parts(state, path)
    if not decoder:
        raise UserError(f"{path.name} holds no tiny-VAE decoder (an encoder alone cannot decode): pass the "
                        "*_decoder file")  # fmt: skip
    width, channels, dec_blocks, out_channels = _decoder_shape(decoder, path)
    enc_width, enc_blocks = _encoder_shape(encoder, path) if encoder else (width, tuple(reversed(dec_blocks)))
    tiny = AutoencoderTiny(
        in_channels=out_channels,
        out_channels=out_channels,
        encoder_block_out_channels=(enc_width,) * len(enc_blocks),
        decoder_block_out_channels=(width,) * len(dec_blocks),
        latent_channels=channels,
        num_encoder_blocks=enc_blocks,
        num_decoder_blocks=dec_blocks,
    )
    named = {f"decoder.layers.{_shift(k, -1)}": v for k, v in decoder.items()}
    named |= {f"encoder.layers.{k}": v for k, v in encoder.items()}
    expected = {k for k in tiny.state_dict() if encoder or k.startswith("decoder.")}
    missing, unexpected = sorted(expected - set(named)), sorted(set(named) - expected)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(f"{path.name} is not a TAESD-style tiny VAE: {len(missing)} tensors missing, "
                        f"{len(unexpected)} unexpected ({first}, …)")  # fmt: skip
    try:
        tiny.load_state_dict(named, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{path.name} does not fit a TAESD-style tiny VAE: {first_line(exc)}") from None
    return tiny, bool(encoder)


def _original_parts(state: dict[str, torch.Tensor], path: Path) -> tuple[dict, dict]:
    parts: dict[str, dict[str, torch.Tensor]] = {"decoder": {}, "encoder": {}}
    bare = {}
    for key, value in state.items():
        prefix = next((p for p in _ORIGINAL_PREFIXES if key.startswith(p) and key[len(p) : len(p) + 1].isdigit()), None)
        if prefix is None:
            bare[key] = value
        else:
            parts[_ORIGINAL_PREFIXES[prefix]][key[len(prefix) :]] = value
    if bare:
        if not all(key.split(".", 1)[0].isdigit() for key in bare):
            raise UserError(f"{path.name} is not a tiny VAE (AutoencoderTiny / TAESD): unexpected key "
                            f"{next(k for k in bare if not k.split('.', 1)[0].isdigit())!r}")  # fmt: skip
        # a bare nn.Sequential: the encoder starts with its pixel convolution, the decoder with a clamp (no weights)
        parts["encoder" if "0.weight" in bare else "decoder"].update(bare)
    return parts["decoder"], parts["encoder"]


def _shift(key: str, by: int) -> str:
    index, rest = key.split(".", 1)
    return f"{int(index) + by}.{rest}"


def _layers(part: dict[str, torch.Tensor]) -> list[tuple[int, str]]:
    """(index, kind) of a Sequential's layers with weights, in order: block, conv (with bias) or plain (without)."""
    kinds = []
    for index in sorted({int(k.split(".", 1)[0]) for k in part}):
        if f"{index}.conv.0.weight" in part:
            kinds.append((index, "block"))
        elif f"{index}.weight" in part:
            kinds.append((index, "conv" if f"{index}.bias" in part else "plain"))
        else:
            kinds.append((index, "other"))
    return kinds


def _decoder_shape(part: dict[str, torch.Tensor], path: Path) -> tuple[int, int, tuple[int, ...], int]:
    """(width, latent channels, blocks per stage, output channels) of an original-layout decoder: a clamp, a
    convolution from the latents and a ReLU, then stages of blocks separated by upsample + plain convolution, and a
    last convolution to the pixels."""
    layers = _layers(part)
    if not layers or layers[0] != (1, "conv") or layers[-1][1] != "conv" or len(layers) < 3:
        raise UserError(f"{path.name} is not a TAESD-style decoder (clamp, convolution, blocks, ..., convolution)")
    first, last = part["1.weight"], part[f"{layers[-1][0]}.weight"]
    stages = _stages(layers[1:-1], path, "decoder")
    return int(first.shape[0]), int(first.shape[1]), stages, int(last.shape[0])


def _encoder_shape(part: dict[str, torch.Tensor], path: Path) -> tuple[int, tuple[int, ...]]:
    """(width, blocks per stage) of an original-layout encoder: a convolution from the pixels, stages of blocks
    separated by strided plain convolutions, a last convolution to the latents."""
    layers = _layers(part)
    if not layers or layers[0] != (0, "conv") or layers[-1][1] != "conv":
        raise UserError(f"{path.name} is not a TAESD-style encoder (convolution, blocks, ..., convolution)")
    return int(part["0.weight"].shape[0]), _stages(layers[1:-1], path, "encoder")


def _stages(layers: list[tuple[int, str]], path: Path, part: str) -> tuple[int, ...]:
    """Blocks per stage of the layers between a TAESD part's first and last convolution (stages are separated by
    plain convolutions: the upsampling or strided ones)."""
    stages, blocks = [], 0
    for _, kind in layers:
        if kind == "block":
            blocks += 1
        elif kind == "plain":
            stages.append(blocks)
            blocks = 0
        else:
            raise UserError(f"{path.name} is not a TAESD-style {part} (an unexpected layer between its blocks)")
    stages.append(blocks)
    return tuple(stages)


def original_layout(tiny: AutoencoderTiny) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoder, encoder) state dicts in the original TAESD layout (what A1111 and ComfyUI read as
    ``*_decoder.safetensors`` / ``*_encoder.safetensors``)."""
    state = tiny.state_dict()
    decoder = {_shift(k.removeprefix("decoder.layers."), +1): v for k, v in state.items()
               if k.startswith("decoder.layers.")}  # fmt: skip
    encoder = {k.removeprefix("encoder.layers."): v for k, v in state.items() if k.startswith("encoder.layers.")}
    return decoder, encoder
