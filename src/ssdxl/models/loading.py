"""Load an SDXL-family or SD 1.x / 2.x model from wherever users keep one, offline first.

Sources, in the order they are tried: a built-in model name, a diffusers folder, a single-file
checkpoint in the original LDM / SGM layout (``.safetensors``; pickled ``.ckpt``/``.pt``/``.bin``/``.pth``
only with ``allow_pickle``), and a Hugging Face repo id (from the local cache; downloaded only
when the network is allowed). Every failure a user can cause is a one-line ``UserError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ssdxl.errors import UserError, first_line
from ssdxl.models import builtin
from ssdxl.models.components import SSDXL_INFO, Components, build_components
from ssdxl.models.families import family_of
from ssdxl.models.presets import Preset, get_preset
from ssdxl.models.tokenizers import clip_tokenizer

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
SGM_CONFIG_KEY = "ssdxl.configs"  # safetensors metadata entry holding the component configs
HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
PICKLE_HINT = (
    "pickled checkpoints can run arbitrary code when loaded; convert it to .safetensors or pass "
    "--allow-pickle if you trust its source"
)


def load_components(
    source: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    allow_pickle: bool = False,
    prediction: str | None = None,
    zero_snr: bool = False,
) -> Components:
    """Load a model's components on the CPU in ``dtype``. ``None`` is the default built-in model.

    ``prediction`` (v_prediction / v or epsilon / eps) and ``zero_snr`` (zero terminal SNR, trailing timesteps)
    override the scheduler config, for models that do not say how they were trained; a single file without
    ssdxl metadata also takes its preset from ``prediction`` (SD 2.x v models: 768x768)."""
    kind = prediction_type(prediction)
    components = _load_source(source, dtype, allow_pickle, kind)
    components.scheduler_config.update(schedule_overrides(kind, zero_snr))
    return components


def _load_source(
    source: str | os.PathLike | None, dtype: torch.dtype, allow_pickle: bool, prediction: str | None
) -> Components:
    if source is None:
        source = builtin.DEFAULT_MODEL
    text = str(source)
    path = builtin.resolve(text) or Path(text).expanduser()
    if path.is_dir():
        return load_folder(path, dtype=dtype, allow_pickle=allow_pickle)
    if path.is_file():
        return load_single_file(path, dtype=dtype, allow_pickle=allow_pickle, prediction=prediction)
    if HF_ID.match(text) and not text.startswith((".", "/")):
        return load_folder(download(text), dtype=dtype, allow_pickle=allow_pickle)
    known = ", ".join(builtin.names()) or "none installed"
    raise UserError(f"model {text!r} not found: not a built-in name ({known}), folder, file or Hugging Face repo id")


def download(repo_id: str, files: tuple[str, ...] = ("*.json", "*/*.txt", "*/*.safetensors")) -> Path:
    """A repo's snapshot (the ``files`` patterns: a pipeline's by default) from the local Hugging Face cache, fetched
    only if the network is allowed."""
    from huggingface_hub import snapshot_download

    patterns = {"allow_patterns": list(files)}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **patterns))
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            raise UserError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
    try:
        return Path(snapshot_download(repo_id, **patterns))
    except Exception as exc:
        raise UserError(f"could not download {repo_id!r} (no network or no such repo): {first_line(exc)}") from None


# ---------------------------------------------------------------- diffusers folders


def load_folder(folder: Path, *, dtype: torch.dtype, allow_pickle: bool = False) -> Components:
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = _read_json(index_file)
    info = _read_json(folder / SSDXL_INFO) if (folder / SSDXL_INFO).is_file() else {}

    roots = builtin.component_roots(folder)

    def where(name: str) -> Path | None:
        """The component's folder: this model's own, else the one of the built-in model it shares with."""
        entry = index.get(name)
        if not entry or entry[0] is None:
            return None
        return next((root / name for root in roots if (root / name).is_dir()), None)

    found = {name: where(name) for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    for name in ("unet", "vae", "scheduler"):
        if found[name] is None:
            raise UserError(f"{folder} has no {name}/ component; is it a Stable Diffusion pipeline?")
    if found["text_encoder"] is None and found["text_encoder_2"] is None:
        raise UserError(f"{folder} has no text_encoder/ component; is it a Stable Diffusion pipeline?")
    try:
        unet = from_pretrained(UNet2DConditionModel, found["unet"], dtype, allow_pickle)
        vae = from_pretrained(AutoencoderKL, found["vae"], dtype, allow_pickle)
        te1 = found["text_encoder"] and from_pretrained(CLIPTextModel, found["text_encoder"], dtype, allow_pickle)
        te2 = found["text_encoder_2"] and from_pretrained(
            CLIPTextModelWithProjection, found["text_encoder_2"], dtype, allow_pickle
        )
        tok1 = _tokenizer(folder, "tokenizer") if te1 is not None else None
        tok2 = _tokenizer(folder, "tokenizer_2") if te2 is not None else None
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not load {folder}: {first_line(exc)}") from None
    scheduler_config = _read_json(_one_of(found["scheduler"], ["scheduler_config.json"]))
    family = family_of(unet.config, te1.config.to_dict() if te1 is not None else None, scheduler_config)
    pipeline = info.get("pipeline") or {
        "force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", family.empty_negative_zeros),
        "requires_aesthetics_score": index.get("requires_aesthetics_score", family.is_refiner),
    }
    components = Components(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        scheduler_config=scheduler_config,
        pipeline=pipeline,
        defaults=info.get("defaults", {}),
        name=info.get("name") or folder.name,
    )
    components.defaults = {**fallback_defaults(components), **components.defaults}
    return components


def _tokenizer(folder: Path, slot: str) -> CLIPTokenizer:
    """The folder's tokenizer, or SDXL's (the CLIP BPE, rebuilt from the package) when it ships none:
    the built-in models leave theirs out to stay small."""
    if (folder / slot).is_dir():
        return CLIPTokenizer.from_pretrained(folder / slot)
    return clip_tokenizer(slot)


def from_pretrained(cls: Any, folder: Path, dtype: torch.dtype, allow_pickle: bool) -> Any:
    """Prefer safetensors; pickled weights only when allowed. Picks an fp16 variant if that is all there is."""
    files = [p.name for p in folder.iterdir()]
    safe = [f for f in files if f.endswith(".safetensors")]
    pickled = [f for f in files if Path(f).suffix in PICKLE_SUFFIXES]
    if not safe and pickled and not allow_pickle:
        raise UserError(f"{folder} holds only pickled weights ({pickled[0]}): {PICKLE_HINT}")
    variant = None
    if safe and not any(f.count(".") == 1 for f in safe):
        variant = safe[0].split(".")[-2]
    kwargs: dict[str, Any] = {"use_safetensors": bool(safe), "variant": variant}
    if cls in (UNet2DConditionModel, AutoencoderKL, AutoencoderTiny):
        kwargs["torch_dtype"] = dtype
        return cls.from_pretrained(folder, **kwargs)
    return cls.from_pretrained(folder, dtype=dtype, **kwargs)


def fallback_defaults(components: Components) -> dict[str, Any]:
    """Generation defaults for a model that ships none: its native size and its family's usuals."""
    family = components.family
    pixels = components.unet.config.sample_size * components.vae_scale
    defaults: dict[str, Any] = {"width": pixels, "height": pixels, "steps": family.default_steps, "scheduler": "Euler"}
    defaults["guidance_scale"] = family.default_guidance
    if components.is_refiner:
        defaults["strength"] = 0.3
    return defaults


# ---------------------------------------------------------------- single files (LDM / SGM layout)


def read_state_dict(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint file, refusing pickles unless allowed."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(f"refusing to load {path.name}: {PICKLE_HINT}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): {first_line(exc)}") from None
        data = data.get("state_dict", data) if isinstance(data, dict) else data
        if not isinstance(data, dict):
            raise UserError(f"{path} does not hold a state dict")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}, {}
    if suffix != ".safetensors":
        raise UserError(f"unsupported model file {path.name}: expected .safetensors (or a diffusers folder)")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:
        raise UserError(f"{path} is not a valid safetensors file (truncated or corrupt?): {first_line(exc)}") from None
    return tensors, metadata


def load_single_file(
    path: Path, *, dtype: torch.dtype, allow_pickle: bool = False, prediction: str | None = None
) -> Components:
    """A single-file checkpoint (LDM / SGM layout): its configs from ssdxl's metadata, else from its keys."""
    from ssdxl.models.sgm import components_from_sgm

    state, metadata = read_state_dict(path, allow_pickle=allow_pickle)
    if SGM_CONFIG_KEY in metadata:
        preset = preset_from_metadata(metadata[SGM_CONFIG_KEY], path.name)
    else:
        preset = preset_from_keys(state, prediction)
    try:
        components = build_components(preset, name=path.stem, empty=True)
    except Exception as exc:  # configs in bounds that still make no model (a width heads do not divide, ...)
        raise UserError(f"{path.name}: its configs do not build a model: {first_line(exc)}") from None
    state_dicts = components_from_sgm(state, preset.unet)
    for name, module in components.modules().items():
        if name not in state_dicts:
            raise UserError(f"{path.name} has no weights for the {name}")
        try:
            missing, unexpected = module.load_state_dict(state_dicts[name], strict=False, assign=True)
        except RuntimeError:  # same names, other shapes: a scaled or custom model without ssdxl metadata
            raise UserError(
                f"{path.name}: the {name} tensors do not have the shapes of {preset.name}; "
                "custom-size checkpoints need the configs ssdxl writes into its files"
            ) from None
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise UserError(
                f"{path.name} does not match the {preset.name} {name} "
                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)"
            )
        module.to(dtype)
    return components


PREDICTIONS = {"v": "v_prediction", "v_prediction": "v_prediction", "eps": "epsilon", "epsilon": "epsilon"}
ZERO_SNR = {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}  # as diffusers' zero-SNR recipe


def prediction_type(text: str | None) -> str | None:
    """The diffusers ``prediction_type`` a user means by v / v_prediction / eps / epsilon (None: unchanged)."""
    if text is None:
        return None
    if text.lower() not in PREDICTIONS:
        raise UserError(f"unknown prediction {text!r}; use v or eps")
    return PREDICTIONS[text.lower()]


def schedule_overrides(prediction: str | None, zero_snr: bool) -> dict[str, Any]:
    """Scheduler config entries for what the UNet predicts and for a zero-terminal-SNR schedule."""
    return ({"prediction_type": prediction} if prediction else {}) | (ZERO_SNR if zero_snr else {})


def preset_from_keys(state: dict[str, torch.Tensor], prediction: str | None = None) -> Preset:
    """The preset of a single file without ssdxl metadata, from its keys. What its UNet predicts (``prediction``,
    else ``detect_prediction``) and a ``ztsnr`` marker go into the scheduler config: key names cannot show them."""
    from ssdxl.models.detect import detect_prediction, detect_preset
    from ssdxl.models.sgm import ZTSNR_KEY

    kind = prediction or detect_prediction(state)
    preset = get_preset(detect_preset(state.keys(), kind))
    return dataclasses.replace(preset, scheduler={**preset.scheduler, **schedule_overrides(kind, ZTSNR_KEY in state)})


def preset_from_metadata(text: str, source: str = "the file") -> Preset:
    """The configs ssdxl stores in the files it writes, so scaled or custom models load exactly.

    They come from a file, so every size in them is checked against ``CONFIG_LIMITS`` before a module
    is built: a crafted file cannot make the loader allocate without bound."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        preset = Preset(**data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{source}: unreadable {SGM_CONFIG_KEY} metadata: {first_line(exc)}") from None
    check_config_bounds(preset, source)
    return preset


# Upper bounds for the sizes a file's configs may ask for: about 4x the largest SDXL-family value
# (SDXL base/refiner, SSD-1B, Vega), so real and scaled-up models load and absurd ones are refused.
CONFIG_LIMITS: dict[str, int] = {
    # UNet and VAE (diffusers names)
    "sample_size": 4096,  # UNet 128 (latent pixels), VAE 1024
    "in_channels": 64,  # 4 (9 for inpainting UNets), VAE 3
    "out_channels": 64,
    "latent_channels": 64,  # 4
    "block_out_channels": 6144,  # refiner 1536
    "layers_per_block": 8,  # 2
    "transformer_layers_per_block": 40,  # 10
    "reverse_transformer_layers_per_block": 40,
    "attention_head_dim": 256,  # 24 (refiner)
    "num_attention_heads": 128,  # text towers: 20
    "cross_attention_dim": 8192,  # 2048
    "addition_time_embed_dim": 1024,  # 256
    "projection_class_embeddings_input_dim": 16384,  # 2816
    "addition_embed_type_num_heads": 256,  # 64
    "encoder_hid_dim": 8192,
    "time_embedding_dim": 8192,
    "time_cond_proj_dim": 1024,
    "num_class_embeds": 4096,
    "norm_num_groups": 128,  # 32
    "conv_in_kernel": 7,  # 3
    "conv_out_kernel": 7,
    # CLIP text towers (transformers names)
    "hidden_size": 5120,  # bigG 1280
    "intermediate_size": 20480,  # 5120
    "projection_dim": 5120,  # 1280
    "num_hidden_layers": 128,  # 32
    "max_position_embeddings": 512,  # 77
    "vocab_size": 200_000,  # 49408
    "pad_token_id": 200_000,
    "bos_token_id": 200_000,
    "eos_token_id": 200_000,
    # scheduler
    "num_train_timesteps": 10_000,  # 1000
}
DEFAULT_LIMITS = {"width": 8192, "height": 8192, "steps": 1000}  # generation defaults: SDXL 1024, 1024, 30
SIZE_KEYS = set(CONFIG_LIMITS) - {"pad_token_id", "bos_token_id", "eos_token_id"}  # must be at least 1 where set
OTHER_NUMBER_LIMIT = 100_000  # any other number in a config
LIST_LIMIT = 16  # entries of any list (block types, widths, depths: 3-4 in SDXL)


def check_config_bounds(preset: Preset, source: str = "the file") -> None:
    """A one-line UserError naming the key and ``source`` when a config value is out of bounds."""
    for component in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        config = preset.component(component)
        if config is None:
            continue
        if not isinstance(config, dict):
            raise UserError(f"{source}: {SGM_CONFIG_KEY} {component} is not a JSON object")
        for key, value in config.items():
            _check_value(value, f"{component}.{key}", CONFIG_LIMITS.get(key), key in SIZE_KEYS, source)
    if not isinstance(preset.defaults, dict):
        raise UserError(f"{source}: {SGM_CONFIG_KEY} defaults is not a JSON object")
    for key, limit in DEFAULT_LIMITS.items():
        if preset.defaults.get(key) is not None:
            _check_value(preset.defaults[key], f"defaults.{key}", limit, True, source)


def _check_value(value: Any, where: str, limit: int | None, size: bool, source: str) -> None:
    if isinstance(value, list | tuple):
        if len(value) > LIST_LIMIT:
            raise UserError(f"{source}: {SGM_CONFIG_KEY} {where} has {len(value)} entries; at most {LIST_LIMIT}")
        for item in value:
            _check_value(item, where, limit, size, source)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_value(item, f"{where}.{key}", None, False, source)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        if limit is not None and value is not None:
            raise UserError(f"{source}: {SGM_CONFIG_KEY} {where} = {str(value)[:40]!r} is not a number")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: {SGM_CONFIG_KEY} {where} = {value!r} is not a finite number")
    if limit is not None and isinstance(value, float) and not value.is_integer():
        raise UserError(f"{source}: {SGM_CONFIG_KEY} {where} = {value!r} is not a whole number")
    bound = limit if limit is not None else OTHER_NUMBER_LIMIT
    lowest = 1 if size else (0 if limit is not None else -bound)
    if not lowest <= value <= bound:
        raise UserError(
            f"{source}: {SGM_CONFIG_KEY} {where} = {value:g} is outside {lowest}..{bound}; refusing to build a model "
            "that size from a file's metadata"
        )


# ---------------------------------------------------------------- small helpers


def file_hash(path: Path) -> str:
    """AUTOMATIC1111's short model hash (first 10 hex digits of the sha256), cached by size and mtime."""
    from ssdxl.paths import cache_dir

    stat = path.stat()
    cache_file = cache_dir() / "hashes.json"
    key = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    cached = _read_hash_cache(cache_file).get(key)
    if isinstance(cached, str):
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    short = digest.hexdigest()[:10]
    with _HASH_CACHE_LOCK:
        cache = {**_read_hash_cache(cache_file), key: short}
        # written to a file of its own and moved into place: threads of one server and processes hashing at once
        # (workers, test workers) must never leave one another a half-written file to read
        handle, partial = tempfile.mkstemp(dir=cache_file.parent, prefix=f"{cache_file.name}.", suffix=".partial")
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(cache))
        os.replace(partial, cache_file)
    return short


_HASH_CACHE_LOCK = threading.Lock()


def _read_hash_cache(cache_file: Path) -> dict[str, Any]:
    """The cache's entries; an unreadable cache counts as empty (it is rewritten whole on the next miss), since a
    cache must never fail the request that consults it."""
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def weights_file(source: Path) -> Path | None:
    """The file whose hash identifies a model: the single file, or a folder's UNet weights."""
    if source.is_file():
        return source
    candidates = sorted((source / "unet").glob("*.safetensors")) if (source / "unet").is_dir() else []
    return candidates[0] if candidates else None


def _one_of(folder: Path, names: list[str]) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise UserError(f"{folder} has none of {', '.join(names)}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
