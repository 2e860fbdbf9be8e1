"""Load an SDXL-family model from wherever users keep one, offline first.

Sources, in the order they are tried: a built-in model name, a diffusers folder, a single-file
checkpoint in the original SGM layout (``.safetensors``; pickled ``.ckpt``/``.pt``/``.bin``/``.pth``
only with ``allow_pickle``), and a Hugging Face repo id (from the local cache; downloaded only
when the network is allowed). Every failure a user can cause is a one-line ``UserError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.models.components import SSDXL_INFO, Components, build_components
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
) -> Components:
    """Load a model's components on the CPU in ``dtype``. ``None`` is the default built-in model."""
    if source is None:
        source = builtin.DEFAULT_MODEL
    text = str(source)
    path = builtin.resolve(text) or Path(text).expanduser()
    if path.is_dir():
        return load_folder(path, dtype=dtype, allow_pickle=allow_pickle)
    if path.is_file():
        return load_single_file(path, dtype=dtype, allow_pickle=allow_pickle)
    if HF_ID.match(text) and not text.startswith((".", "/")):
        return load_folder(download(text), dtype=dtype, allow_pickle=allow_pickle)
    known = ", ".join(builtin.names()) or "none installed"
    raise UserError(f"model {text!r} not found: not a built-in name ({known}), folder, file or Hugging Face repo id")


def download(repo_id: str) -> Path:
    """A repo's snapshot from the local Hugging Face cache, fetched only if the network is allowed."""
    from huggingface_hub import snapshot_download

    patterns = {"allow_patterns": ["*.json", "*/*.txt", "*/*.safetensors"]}
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **patterns))
    except Exception:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            raise UserError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set") from None
    try:
        return Path(snapshot_download(repo_id, **patterns))
    except Exception as exc:
        raise UserError(f"could not download {repo_id!r} (no network or no such repo): {_first_line(exc)}") from None


# ---------------------------------------------------------------- diffusers folders


def load_folder(folder: Path, *, dtype: torch.dtype, allow_pickle: bool = False) -> Components:
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    index = _read_json(index_file)
    info = _read_json(folder / SSDXL_INFO) if (folder / SSDXL_INFO).is_file() else {}

    lender = _lender(folder, info)

    def where(name: str) -> Path | None:
        """The component's folder: this model's own, else the one of the built-in model it shares with."""
        entry = index.get(name)
        if not entry or entry[0] is None:
            return None
        for root in (folder, lender):
            if root is not None and (root / name).is_dir():
                return root / name
        return None

    found = {name: where(name) for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    for name in ("unet", "vae", "text_encoder_2", "scheduler"):
        if found[name] is None:
            raise UserError(f"{folder} has no {name}/ component; is it an SDXL-family pipeline?")
    try:
        unet = _from_pretrained(UNet2DConditionModel, found["unet"], dtype, allow_pickle)
        vae = _from_pretrained(AutoencoderKL, found["vae"], dtype, allow_pickle)
        te1 = found["text_encoder"] and _from_pretrained(CLIPTextModel, found["text_encoder"], dtype, allow_pickle)
        te2 = _from_pretrained(CLIPTextModelWithProjection, found["text_encoder_2"], dtype, allow_pickle)
        tok1 = _tokenizer(folder, "tokenizer") if te1 is not None else None
        tok2 = _tokenizer(folder, "tokenizer_2")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not load {folder}: {_first_line(exc)}") from None
    scheduler_config = _read_json(_one_of(found["scheduler"], ["scheduler_config.json"]))
    pipeline = info.get("pipeline") or {
        "force_zeros_for_empty_prompt": index.get("force_zeros_for_empty_prompt", True),
        "requires_aesthetics_score": index.get("requires_aesthetics_score", te1 is None),
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


def _lender(folder: Path, info: dict[str, Any]) -> Path | None:
    """The built-in model whose component folders fill in this one's missing ones (``ssdxl.json``'s
    ``components_from``): a distilled built-in student ships only its UNet and shares the rest."""
    name = info.get("components_from")
    if name is None:
        return None
    lender = builtin.resolve(str(name))
    if lender is None or lender.resolve() == folder.resolve():
        raise UserError(f"{folder}: components_from names {name!r}, which is not another built-in model")
    return lender


def _tokenizer(folder: Path, slot: str) -> CLIPTokenizer:
    """The folder's tokenizer, or SDXL's (the CLIP BPE, rebuilt from the package) when it ships none:
    the built-in models leave theirs out to stay small."""
    if (folder / slot).is_dir():
        return CLIPTokenizer.from_pretrained(folder / slot)
    return clip_tokenizer(slot)


def _from_pretrained(cls: Any, folder: Path, dtype: torch.dtype, allow_pickle: bool) -> Any:
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
    if cls in (UNet2DConditionModel, AutoencoderKL):
        kwargs["torch_dtype"] = dtype
        return cls.from_pretrained(folder, **kwargs)
    return cls.from_pretrained(folder, dtype=dtype, **kwargs)


def fallback_defaults(components: Components) -> dict[str, Any]:
    """Generation defaults for a model that ships none: its native size and the SDXL usuals."""
    pixels = components.unet.config.sample_size * components.vae_scale
    defaults: dict[str, Any] = {"width": pixels, "height": pixels, "steps": 30, "scheduler": "Euler"}
    if components.is_refiner:
        defaults.update(guidance_scale=5.0, strength=0.3)
    else:
        defaults.update(guidance_scale=7.0)
    return defaults


# ---------------------------------------------------------------- single files (SGM layout)


def read_state_dict(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint file, refusing pickles unless allowed."""
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise UserError(f"refusing to load {path.name}: {PICKLE_HINT}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(
                f"{path} is not a readable checkpoint (truncated or corrupt?): {_first_line(exc)}"
            ) from None
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
        raise UserError(f"{path} is not a valid safetensors file (truncated or corrupt?): {_first_line(exc)}") from None
    return tensors, metadata


def load_single_file(path: Path, *, dtype: torch.dtype, allow_pickle: bool = False) -> Components:
    from ssdxl.models.detect import detect_preset
    from ssdxl.models.sgm import components_from_sgm

    state, metadata = read_state_dict(path, allow_pickle=allow_pickle)
    if SGM_CONFIG_KEY in metadata:
        preset = preset_from_metadata(metadata[SGM_CONFIG_KEY])
    else:
        preset = get_preset(detect_preset(state.keys()))
    components = build_components(preset, name=path.stem, empty=True)
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


def preset_from_metadata(text: str) -> Preset:
    """The configs ssdxl stores in the files it writes, so scaled or custom models load exactly."""
    try:
        data = json.loads(text)
        return Preset(**data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"unreadable {SGM_CONFIG_KEY} metadata: {exc}") from None


# ---------------------------------------------------------------- small helpers


def file_hash(path: Path) -> str:
    """AUTOMATIC1111's short model hash (first 10 hex digits of the sha256), cached by size and mtime."""
    from ssdxl.paths import cache_dir

    stat = path.stat()
    cache_file = cache_dir() / "hashes.json"
    cache = _read_json(cache_file) if cache_file.is_file() else {}
    key = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        cache[key] = digest.hexdigest()[:10]
        cache_file.write_text(json.dumps(cache))
    return cache[key]


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
