"""IP-Adapter image prompts: an image's CLIP embedding as extra cross-attention tokens, with diffusers doing
the model work.

A file in h94's layout (``image_proj.*`` and ``ip_adapter.*``) is converted once per loaded UNet by
diffusers' own loader code (``UNet2DConditionModel._convert_ip_adapter_attn_to_diffusers`` and
``_convert_ip_adapter_image_proj_to_diffusers``, what ``load_ip_adapter`` calls) and stays resident.
``IPAdapterPatcher.applied`` puts a request's adapters on as ``unload_ip_adapter`` would take them off:
IP-Adapter processors on the cross-attention layers, the image projection as ``encoder_hid_proj``,
``encoder_hid_dim_type = "ip_image_proj"``; on exit the very processor objects the UNet had come back, so
peft LoRA layers and any tuned processors are untouched and the next request's output is the plain UNet's.

``ImageEncoders.embeds`` computes what diffusers' ``prepare_ip_adapter_image_embeds`` gives one adapter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from ssdxl.adapters.patching import outside_inference_mode
from ssdxl.errors import UserError, first_line
from ssdxl.models.loading import PICKLE_HINT, PICKLE_SUFFIXES, file_hash

SECTIONS = ("image_proj", "ip_adapter")
MAX_RESIDENT = 4  # converted adapters kept per UNet (an SDXL one is ~700 MB in half precision)
MAX_ENCODERS = 2  # CLIP vision towers kept loaded (ViT-H and ViT-bigG cover h94's files)


@dataclass(frozen=True)
class IPAdapterInfo:
    """What an IP-Adapter file is, from its keys and shapes, and the image encoder it needs."""

    path: Path
    name: str  # the file stem
    hash: str  # AUTOMATIC1111's short hash of the file
    variant: str  # "plain" (pooled CLIP embedding), "plus" (resampler over hidden states), "full" (full face)
    tokens: int  # image tokens it adds to each cross-attention
    cross_attention_dim: int  # the UNet width it was trained for (2048 for SDXL)
    image_embed_dim: int  # its projection's input: the encoder's projection_dim (plain) or hidden size
    layer_widths: tuple[int, ...] = field(repr=False)  # hidden size of each layer it patches, in order
    image_encoder: Path  # the CLIPVisionModelWithProjection folder that makes its input


def load_ip_adapter(
    path: str | Path, *, allow_pickle: bool = False, image_encoder: str | Path | None = None
) -> IPAdapterInfo:
    """Check an IP-Adapter file (or a folder holding one) and find its image encoder, loading no weights."""
    file = _adapter_file(Path(path))
    shapes = _sections(_shapes(file, allow_pickle), file.name)
    variant, tokens, cross, embed = _projection(file.name, shapes["image_proj"], shapes["ip_adapter"])
    widths = _layer_widths(file.name, shapes["ip_adapter"])
    encoder, config = _find_encoder(file, variant, embed, image_encoder, allow_pickle)
    if variant == "full":  # one token per patch plus CLS (diffusers assumes ViT-H's 257)
        tokens = (config.image_size // config.patch_size) ** 2 + 1
    return IPAdapterInfo(file, file.stem, file_hash(file), variant, tokens, cross, embed, widths, encoder)


def ip_adapter_names(dirs: Sequence[Path]) -> dict[str, Path]:
    """The adapter files directly in ``dirs`` by stem (h94's ``sdxl_models/`` folder, its encoder beside them);
    earlier folders win a clash."""
    found: dict[str, Path] = {}
    for folder in reversed(dirs):
        if not folder.is_dir():
            raise UserError(f"IP-Adapter folder {folder} does not exist")
        for file in sorted(folder.iterdir()):
            if file.is_file() and (file.suffix == ".safetensors" or file.suffix.lower() in PICKLE_SUFFIXES):
                found[file.stem] = file
    return dict(sorted(found.items()))


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The tensors of a checked IP-Adapter file as diffusers' loader takes them: ``image_proj`` and ``ip_adapter``."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return _sections(load_file(str(path)), path.name)
    return _sections(_unpickle(path), path.name)


def cross_attention_layers(unet: torch.nn.Module) -> list[tuple[str, int]]:
    """(processor name, hidden size) of each layer an IP-Adapter patches, in the order its keys number them
    (``1.to_k_ip``, ``3.to_k_ip``, ...): diffusers' rule in ``_convert_ip_adapter_attn_to_diffusers``."""
    channels = list(unet.config.block_out_channels)
    layers = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        if name.startswith("mid_block"):
            width = channels[-1]
        elif name.startswith("up_blocks"):
            width = channels[::-1][int(name.split(".")[1])]
        else:
            width = channels[int(name.split(".")[1])]
        layers.append((name, width))
    return layers


class _Resident:
    """One adapter converted for one UNet: its image projection and one single-adapter processor per layer."""

    def __init__(self, projection: torch.nn.Module, processors: dict[str, torch.nn.Module]):
        self.projection = projection
        self.processors = processors
        self.placement: tuple[torch.device, torch.dtype] | None = None

    def place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Follow the UNet when it has moved (or changed precision) since the conversion."""
        if self.placement == (device, dtype):
            return
        with outside_inference_mode():
            self.projection.to(device=device, dtype=dtype)
            for processor in self.processors.values():
                processor.to(device=device, dtype=dtype)
        self.placement = (device, dtype)


class IPAdapterPatcher:
    """Owns the IP-Adapters resident in one loaded UNet and puts a request's set on and off."""

    def __init__(self, unet: torch.nn.Module, max_resident: int = MAX_RESIDENT):
        self.unet = unet
        self.max_resident = max_resident
        self.layers = cross_attention_layers(unet)
        self._resident: OrderedDict[str, _Resident] = OrderedDict()
        self._active = False

    def check(self, info: IPAdapterInfo) -> None:
        """A one-line UserError unless ``info`` fits this UNet's cross-attention layers."""
        width = self.unet.config.cross_attention_dim
        if info.cross_attention_dim != width:
            raise UserError(
                f"IP-Adapter {info.name} is for cross-attention width {info.cross_attention_dim}, this model's UNet "
                f"has {width}: it was made for another model family"
            )
        widths = tuple(w for _, w in self.layers)
        if info.layer_widths != widths:
            raise UserError(
                f"IP-Adapter {info.name} patches {len(info.layer_widths)} cross-attention layers, this model's UNet "
                f"has {len(widths)} (or other widths): it was made for another architecture"
            )
        if not self._active and self.unet.encoder_hid_proj is not None:
            raise UserError(
                f"IP-Adapter {info.name}: this model's UNet already has an encoder_hid_proj "
                f"({self.unet.config.encoder_hid_dim_type}); IP-Adapters are not supported on it"
            )

    def load(self, info: IPAdapterInfo) -> None:
        """Make ``info`` resident, converted by diffusers' loader code (once per file content)."""
        if info.hash in self._resident:
            self._resident.move_to_end(info.hash)
            return
        self.check(info)
        unet = self.unet
        with outside_inference_mode():  # ordinary tensors: diffusers makes parameters of them
            state = read_ip_adapter(info.path)
            try:
                processors = unet._convert_ip_adapter_attn_to_diffusers([state])
                projection = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"])
            except (KeyError, ValueError) as exc:  # a missing key or a shape mismatch
                raise UserError(f"IP-Adapter {info.name} does not fit this model: {first_line(exc)}") from None
            while len(self._resident) >= self.max_resident:
                self._resident.popitem(last=False)
        resident = _Resident(projection.eval(), {name: processors[name] for name, _ in self.layers})
        self._resident[info.hash] = resident

    @contextmanager
    def applied(self, adapters: Sequence[tuple[IPAdapterInfo, float]]) -> Iterator[None]:
        """The UNet with exactly ``adapters`` on at their scales for the block, as it was afterwards.

        The engine passes one image-embedding tensor per adapter, in this order, as ``image_embeds``."""
        if not adapters:
            yield
            return
        if self._active:
            raise RuntimeError("IP-Adapters are already applied to this UNet")
        if len(adapters) > self.max_resident:
            raise UserError(f"at most {self.max_resident} IP-Adapters per request, got {len(adapters)}")
        for info, _ in adapters:
            self.load(info)
        residents = [self._resident[info.hash] for info, _ in adapters]
        unet = self.unet
        for resident in residents:
            resident.place(unet.device, unet.dtype)
        scales = [float(scale) for _, scale in adapters]
        saved = unet.attn_processors
        saved_projection, saved_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
        processors = dict(saved)
        for name, _ in self.layers:
            processors[name] = _combined([r.processors[name] for r in residents], scales)
        from diffusers.models.embeddings import MultiIPAdapterImageProjection

        self._active = True
        try:
            unet.set_attn_processor(processors)  # before encoder_hid_proj: a resampler has attention layers too
            unet.encoder_hid_proj = MultiIPAdapterImageProjection([r.projection for r in residents])
            unet.config.encoder_hid_dim_type = "ip_image_proj"
            yield
        finally:
            unet.encoder_hid_proj = saved_projection
            unet.config.encoder_hid_dim_type = saved_type
            unet.set_attn_processor(dict(saved))
            self._active = False


def _combined(singles: list[torch.nn.Module], scales: list[float]) -> torch.nn.Module:
    """One layer's processor for several adapters, sharing the resident adapters' key/value projections."""
    first = singles[0]
    with torch.device("meta"):  # its own freshly made projections are replaced at once: make them free
        processor = type(first)(
            hidden_size=first.hidden_size,
            cross_attention_dim=first.cross_attention_dim,
            num_tokens=[t for s in singles for t in s.num_tokens],
            scale=scales,
        )
    processor.to_k_ip = torch.nn.ModuleList([s.to_k_ip[0] for s in singles])
    processor.to_v_ip = torch.nn.ModuleList([s.to_v_ip[0] for s in singles])
    return processor


class ImageEncoders:
    """The CLIP vision towers IP-Adapters read images with, loaded once and shared by every adapter."""

    def __init__(self, max_resident: int = MAX_ENCODERS):
        self.max_resident = max_resident
        self._loaded: OrderedDict[tuple[Path, str, torch.dtype], tuple[torch.nn.Module, object]] = OrderedDict()

    def get(self, folder: Path, *, device: torch.device | str, dtype: torch.dtype) -> tuple[torch.nn.Module, object]:
        """(CLIPVisionModelWithProjection, CLIPImageProcessor) for ``folder``: the processor is the one
        ``load_ip_adapter`` makes, CLIP's defaults at the encoder's image size."""
        key = (folder.resolve(), str(torch.device(device)), dtype)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        safe = any(folder.glob("*.safetensors"))
        with outside_inference_mode():
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype, use_safetensors=safe)
            except (OSError, ValueError) as exc:
                raise UserError(f"image encoder {folder}: cannot load it ({first_line(exc)})") from None
            model = model.to(device).eval()
        size = model.config.image_size
        while len(self._loaded) >= self.max_resident:
            self._loaded.popitem(last=False)
        self._loaded[key] = model, CLIPImageProcessor(size=size, crop_size=size)
        return self._loaded[key]

    def embeds(
        self,
        info: IPAdapterInfo,
        images: Image.Image | Sequence[Image.Image],
        *,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(uncond, cond) image embeddings for one adapter, each ``[1, n_images, ...]``: diffusers'
        ``encode_image`` (plain: pooled projection, zeros for uncond; plus and full: the penultimate hidden
        states, uncond from an all-zero image). Several images give several image-token groups."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            raise UserError(f"IP-Adapter {info.name}: no image given")
        model, processor = self.get(info.image_encoder, device=device, dtype=dtype)
        pixels = processor([image.convert("RGB") for image in images], return_tensors="pt").pixel_values
        pixels = pixels.to(device=model.device, dtype=model.dtype)
        with torch.no_grad():
            if info.variant == "plain":
                cond = model(pixels).image_embeds
                uncond = torch.zeros_like(cond)
            else:
                cond = model(pixels, output_hidden_states=True).hidden_states[-2]
                uncond = model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return uncond[None], cond[None]


# ---------------------------------------------------------------- reading files


def _adapter_file(path: Path) -> Path:
    """The file itself, or a folder's one adapter file (its .safetensors, else its one pickle)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"IP-Adapter {str(path)!r} not found")
    safe = sorted(path.glob("*.safetensors"))
    pickled = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    found = safe or pickled
    if len(found) != 1:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "") or "no .safetensors file"
        raise UserError(f"IP-Adapter folder {path} must hold exactly one adapter file ({names}): pass the file")
    return found[0]


def _shapes(file: Path, allow_pickle: bool) -> dict[str, tuple[int, ...]]:
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(f"IP-Adapter {file.name}: {PICKLE_HINT}")
        return {key: tuple(value.shape) for key, value in _flat(_unpickle(file)).items()}
    if suffix != ".safetensors":
        raise UserError(f"IP-Adapter {file.name}: not a .safetensors file")
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise UserError(f"IP-Adapter {file.name}: not a valid safetensors file ({first_line(exc)})") from None


def _unpickle(file: Path) -> dict:
    try:
        data = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"IP-Adapter {file.name}: not a readable checkpoint ({first_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"IP-Adapter {file.name}: does not hold a state dict")
    return data


def _flat(data: dict) -> dict:
    """h94's pickles nest ``{"image_proj": {...}, "ip_adapter": {...}}``; safetensors flatten it with dots."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            flat[key] = value
    return flat


def _sections(data: dict, name: str) -> dict[str, dict]:
    """The flat or nested layout as diffusers' loader takes it; a UserError if it is no IP-Adapter."""
    sections: dict[str, dict] = {name: {} for name in SECTIONS}
    for key, value in _flat(data).items():
        head, _, rest = key.partition(".")
        if head in sections:
            sections[head][rest] = value
    if not all(sections.values()):
        raise UserError(
            f"{name} is not an IP-Adapter file: it needs image_proj.* and ip_adapter.* weights (h94's layout)"
        )
    return sections


def _projection(
    name: str, proj: dict[str, tuple[int, ...]], layers: dict[str, tuple[int, ...]]
) -> tuple[str, int, int, int]:
    """(variant, tokens, cross-attention width, input width) by diffusers' rules for telling them apart."""
    face_id = "perceiver_resampler.proj_in.weight" in proj or ("norm.weight" in proj and "proj.weight" not in proj)
    if face_id or any("_lora." in key for key in layers):
        raise UserError(
            f"IP-Adapter {name} is a FaceID variant: it needs insightface face embeddings, which ssdxl does not make"
        )
    if "proj.weight" in proj:
        rows, embed = proj["proj.weight"]
        return "plain", 4, rows // 4, embed
    if "proj.3.weight" in proj and "proj.0.weight" in proj:
        return "full", 257, proj["proj.3.weight"][0], proj["proj.0.weight"][0]
    if {"latents", "proj_in.weight", "proj_out.weight"} <= proj.keys():
        return "plus", proj["latents"][1], proj["proj_out.weight"][0], proj["proj_in.weight"][1]
    raise UserError(f"IP-Adapter {name}: unknown image projection layout (not plain, plus or full)")


def _layer_widths(name: str, layers: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The hidden size of each patched layer; the keys must number them 1, 3, 5, ... as diffusers reads them."""
    ids = sorted(int(key.split(".")[0]) for key in layers if key.endswith(".to_k_ip.weight"))
    if not ids or ids != list(range(1, 2 * len(ids), 2)) or any(f"{i}.to_v_ip.weight" not in layers for i in ids):
        raise UserError(f"IP-Adapter {name}: its ip_adapter.* keys are not in h94's layout (1.to_k_ip, 3.to_k_ip, ...)")
    return tuple(layers[f"{i}.to_k_ip.weight"][0] for i in ids)


def _find_encoder(
    file: Path, variant: str, embed: int, explicit: str | Path | None, allow_pickle: bool
) -> tuple[Path, object]:
    """The image encoder folder whose output width is the adapter's input: the one given, else h94's layouts
    (``image_encoder/`` beside the file, in its parent folder, or in a sibling such as ``models/``)."""
    if explicit is not None:
        candidates = [Path(explicit)]
    else:
        parent = file.parent.parent
        candidates = [file.parent / "image_encoder", parent / "image_encoder", *sorted(parent.glob("*/image_encoder"))]
        candidates = [c for c in dict.fromkeys(candidates) if c.is_dir()]
    field = "projection_dim" if variant == "plain" else "hidden_size"
    rejected = []
    for folder in candidates:
        config = _encoder_config(folder)
        if config is None:
            rejected.append(f"{folder} (no CLIP vision config)")
        elif getattr(config, field) != embed:
            rejected.append(f"{folder} ({field} {getattr(config, field)})")
        else:
            _check_encoder_weights(folder, allow_pickle)
            return folder, config
    looked = "; ".join(rejected) or f"no image_encoder/ folder beside {file.name} or in {file.parent.parent}"
    raise UserError(
        f"IP-Adapter {file.name} needs a CLIP image encoder with {field} {embed}; looked at: {looked}. "
        "Pass its image encoder folder"
    )


def _encoder_config(folder: Path) -> object | None:
    from transformers import CLIPVisionConfig

    if not (folder / "config.json").is_file():
        return None
    try:
        return CLIPVisionConfig.from_pretrained(folder)
    except (OSError, ValueError):
        return None


def _check_encoder_weights(folder: Path, allow_pickle: bool) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickled = [p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
    if not pickled:
        raise UserError(f"image encoder {folder} holds no weights")
    if not allow_pickle:
        raise UserError(f"image encoder {folder} holds only pickled weights ({pickled[0]}): {PICKLE_HINT}")
