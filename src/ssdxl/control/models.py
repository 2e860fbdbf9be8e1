"""ControlNet, ControlNet-Union and T2I-Adapter models: found by name, loaded once, checked against a UNet.

A1111 and ComfyUI users keep control models in a folder and pick them by name; ``ControlLibrary``
indexes such folders (plus the built-in ones, ``ssdxl/builtin/controlnets/``) and also takes a path.
A model is a diffusers folder (``config.json`` naming ``ControlNetModel``, ``ControlNetUnionModel`` or
``T2IAdapter``) or a single diffusers-keyed ControlNet file (a folder's ``diffusion_pytorch_model.safetensors``
downloaded alone, as most SDXL ControlNets are shared). A single file carries no config, so it is built
from the UNet it will control, with the depth of its blocks read from its keys; that keeps loading
offline (diffusers' own ``from_single_file`` fetches a config from the Hub).

Whether a model fits a UNet is a comparison of the residuals it hands over (count and channels, per
down block) and of the text conditioning it reads: an SD 1.5 ControlNet on SDXL is a one-line error
naming both, before any step runs.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel, ControlNetUnionModel, T2IAdapter

from ssdxl.errors import UserError, first_line
from ssdxl.models import builtin
from ssdxl.models.loading import PICKLE_SUFFIXES, file_hash, read_state_dict

ControlModel = ControlNetModel | ControlNetUnionModel | T2IAdapter
CLASSES = {cls.__name__: cls for cls in (ControlNetModel, ControlNetUnionModel, T2IAdapter)}
SUFFIXES = (".safetensors", *sorted(PICKLE_SUFFIXES))
MAX_LOADED = 4  # control models kept in memory at once (least recently used goes first)
# ControlNet++ / xinsir's union models: which condition a map is, as their ``control_type`` one-hot indexes it
UNION_TYPES = {
    "openpose": 0, "depth": 1, "hed": 2, "pidi": 2, "scribble": 2, "ted": 2, "softedge": 2,
    "canny": 3, "lineart": 3, "anime_lineart": 3, "mlsd": 3, "normal": 4, "segment": 5, "tile": 6,
    "repaint": 7, "inpaint": 7,
}  # fmt: skip


@dataclass(frozen=True)
class ControlInfo:
    """A control model file or folder as a request names it."""

    path: Path
    name: str
    kind: str  # ControlNetModel, ControlNetUnionModel or T2IAdapter
    hash: str


class ControlLibrary:
    """Control models by name from folders (the user's, then the built-in ones) or by path; loaded lazily,
    at most ``max_loaded`` at once, on the engine's device and dtype."""

    def __init__(
        self,
        dirs: Iterable[Path] = (),
        *,
        allow_paths: bool = True,
        allow_pickle: bool = False,
        max_loaded: int = MAX_LOADED,
    ):
        self.dirs = [Path(d).expanduser() for d in dirs] + builtin.controlnet_dirs()
        for folder in self.dirs:
            if not folder.is_dir():
                raise UserError(f"ControlNet folder {folder} does not exist")
        self.allow_paths = allow_paths
        self.allow_pickle = allow_pickle
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple, ControlModel] = OrderedDict()

    def names(self) -> dict[str, Path]:
        """Every control model in the folders, by name (a folder's name, or a file's stem)."""
        found: dict[str, Path] = {}
        for folder in reversed(self.dirs):  # earlier folders win a clash
            for entry in sorted(folder.iterdir()):
                if entry.is_dir() and (entry / "config.json").is_file():
                    found[entry.name] = entry
                elif entry.is_file() and entry.suffix.lower() in self._suffixes():
                    found[entry.stem] = entry
        return dict(sorted(found.items()))

    def _suffixes(self) -> tuple[str, ...]:
        """The single-file suffixes offered by name: pickles only where the user allowed them."""
        return SUFFIXES if self.allow_pickle else (".safetensors",)

    def info(self, ref: str) -> ControlInfo:
        """The control model ``ref`` names: a name from the folders, else (where allowed) a path."""
        named = self.names()
        path = named.get(ref)
        as_path = Path(ref).expanduser()
        if path is None and as_path.exists() and (self.allow_paths or as_path.resolve() in _resolved(named)):
            path = as_path  # a path, or a resolved request's model (a file of the folders)
        if path is None:
            known = ", ".join(self.names()) or "none"
            raise UserError(f"unknown ControlNet {ref!r}; available: {known}")
        path = path.resolve()
        if path.is_file() and path.suffix.lower() in PICKLE_SUFFIXES and not self.allow_pickle:
            raise UserError(f"refusing to load {path.name}: pickled files run code when loaded; pass --allow-pickle")
        kind = _folder_class(path) if path.is_dir() else "ControlNetModel"
        weights = _folder_weights(path) if path.is_dir() else path
        return ControlInfo(path, path.name if path.is_dir() else path.stem, kind, file_hash(weights))

    def load(self, info: ControlInfo, unet: torch.nn.Module, vae_scale: int = 8) -> ControlModel:
        """The model on ``unet``'s device and dtype, checked to fit it and a VAE of ``vae_scale`` (UserError
        otherwise)."""
        key = (info.path, info.hash, unet.device, unet.dtype)  # a file retrained in place is read again
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        model = _read(info, unet, self.allow_pickle)
        check_fit(model, unet, info.name, vae_scale)
        model = model.to(unet.device) if model.dtype == unet.dtype else model.to(unet.device, unet.dtype)
        model.eval().requires_grad_(False)
        self._loaded[key] = model
        while len(self._loaded) > self.max_loaded:
            self._loaded.popitem(last=False)
        return model


def check_fit(model: ControlModel, unet: torch.nn.Module, name: str, vae_scale: int = 8) -> None:
    """UserError unless ``model``'s residuals and conditioning are what ``unet`` takes, and it reads its map at
    the pixel size of the model's images (its downscaling equals the VAE's)."""
    if isinstance(model, T2IAdapter):
        xl = model.config.adapter_type == "full_adapter_xl"
        if xl != (unet.config.addition_embed_type == "text_time"):
            family = "SDXL" if xl else "SD 1.x/2.x"
            raise UserError(f"T2I-Adapter {name} is made for {family} models; it cannot control this model")
        downscale = model.config.downscale_factor // (2 if xl else 1)  # the XL adapter starts one level down
        _check_downscale(name, downscale, vae_scale)
        return
    _check_downscale(name, 2 ** (len(model.config.conditioning_embedding_out_channels) - 1), vae_scale)
    width, unet_width = model.config.cross_attention_dim, unet.config.cross_attention_dim
    if width != unet_width or model.config.addition_embed_type != unet.config.addition_embed_type:
        raise UserError(
            f"ControlNet {name} is for another architecture (text width {width}, "
            f"{model.config.addition_embed_type or 'no'} extra embedding) than this model "
            f"(text width {unet_width}, {unet.config.addition_embed_type or 'no'} extra embedding)"
        )
    ours, theirs = unet_residual_channels(unet), [block.out_channels for block in model.controlnet_down_blocks]
    if ours != theirs:
        raise UserError(
            f"ControlNet {name} hands over {len(theirs)} residuals ({_short(theirs)}) but this UNet takes "
            f"{len(ours)} ({_short(ours)}): it was made for another architecture"
        )


def _check_downscale(name: str, downscale: int, vae_scale: int) -> None:
    if downscale != vae_scale:
        raise UserError(
            f"{name} reads its control map at 1/{downscale} of the image size, but this model's latents are "
            f"1/{vae_scale}: it was made for another VAE"
        )


def unet_residual_channels(unet: torch.nn.Module) -> list[int]:
    """The channels of the skip connections a UNet's down path keeps, in order: what a ControlNet adds to."""
    channels = [unet.conv_in.out_channels]
    for block in unet.down_blocks:
        channels += [resnet.out_channels for resnet in block.resnets]
        channels += [down.out_channels for down in block.downsamplers or ()]
    return channels


def union_type_index(model: ControlModel, control_type: str | None, name: str) -> int | None:
    """The one-hot index of ``control_type`` for a union model; None for single-condition models."""
    if not isinstance(model, ControlNetUnionModel):
        if control_type:
            raise UserError(f"ControlNet {name} is not a union model; control type {control_type!r} needs one")
        return None
    if control_type not in UNION_TYPES:
        raise UserError(f"union ControlNet {name} needs a control type: one of {', '.join(UNION_TYPES)}")
    index = UNION_TYPES[control_type]
    if index >= model.config.num_control_type:
        raise UserError(
            f"ControlNet {name} knows {model.config.num_control_type} control types; {control_type} is not one"
        )
    return index


# ---------------------------------------------------------------------- reading files


def _folder_class(path: Path) -> str:
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{path} is not a diffusers ControlNet / T2I-Adapter folder (no config.json)")
    kind = json.loads(config.read_text()).get("_class_name", "")
    if kind == "ControlNetXSAdapter" or kind not in CLASSES:
        raise UserError(f"{path} holds a {kind or 'unknown model'}; expected one of {', '.join(CLASSES)}")
    return kind


def _folder_weights(path: Path) -> Path:
    files = sorted(path.glob("*.safetensors")) or sorted(f for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if not files:
        raise UserError(f"{path} has no weights file")
    return files[0]


def _read(info: ControlInfo, unet: torch.nn.Module, allow_pickle: bool) -> ControlModel:
    if info.path.is_dir():
        safe = any(info.path.glob("*.safetensors"))
        if not safe and not allow_pickle:
            raise UserError(f"{info.path} holds only pickled weights; pass --allow-pickle if you trust it")
        try:
            return CLASSES[info.kind].from_pretrained(info.path, use_safetensors=safe, torch_dtype=unet.dtype)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:  # a corrupt or mismatched folder
            raise UserError(f"cannot load {info.kind} {info.name}: {first_line(exc)}") from None
    state, _ = read_state_dict(info.path, allow_pickle=allow_pickle)
    return _from_single_file(state, unet, info.name)


def _from_single_file(state: dict[str, torch.Tensor], unet: torch.nn.Module, name: str) -> ControlNetModel:
    """A ControlNet from one file, its config derived from ``unet`` and the depth its keys show."""
    if "controlnet_cond_embedding.conv_in.weight" not in state:
        original = any(k.startswith(("control_model.", "input_hint_block.")) for k in state)
        what = "is in the original control_model.* layout" if original else "is not a ControlNet file"
        raise UserError(f"{name} {what}; use a diffusers ControlNet folder or its diffusion_pytorch_model.safetensors")
    with init_empty_weights():  # the config only: no full-size random weights
        config = dict(ControlNetModel.from_unet(unet, load_weights_from_unet=False).config)
    blocks = range(len(config["down_block_types"]))
    config["conditioning_channels"] = state["controlnet_cond_embedding.conv_in.weight"].shape[1]
    config["transformer_layers_per_block"] = [
        _count(state, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") or 1 for i in blocks
    ]
    config["down_block_types"] = [
        "CrossAttnDownBlock2D" if any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) else "DownBlock2D"
        for i in blocks
    ]
    model = ControlNetModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{name} does not fit this model's ControlNet shape ({len(missing)} weights missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    return model


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def _resolved(named: dict[str, Path]) -> set[Path]:
    return {path.resolve() for path in named.values()}


def display_name(model: str | Path) -> str:
    """How a control model is named in records: a folder's name, a file's stem (``controlnet-canny-sdxl-1.0``
    stays whole)."""
    path = Path(model)
    return path.stem if path.suffix.lower() in SUFFIXES else path.name


def _short(channels: list[int]) -> str:
    return ", ".join(map(str, channels))
