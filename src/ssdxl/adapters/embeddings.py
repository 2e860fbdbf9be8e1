"""Textual-inversion embeddings: learned token vectors a prompt calls by name.

Files come as SDXL's two-tower ``{"clip_l": [n, 768], "clip_g": [n, 1280]}`` (e.g. unaestheticXL),
diffusers' ``learned_embeds`` (``{"<token>": [n, D]}``), A1111's ``{"emb_params": [n, D]}`` or
its pickled ``string_to_param`` (only with ``allow_pickle``); the one-tower kinds are SD 1.x (768 wide)
and SD 2.x (1024 wide) embeddings. A prompt uses an embedding by its name (the file stem) or as ComfyUI
writes it, ``embedding:name``; ``conditioning.prompt`` puts the vectors where the name stands, in the
positive or negative prompt, with the prompt's weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ssdxl.adapters.lora import CONDITIONING_WIDTHS
from ssdxl.errors import UserError, first_line
from ssdxl.models.families import Family
from ssdxl.models.loading import PICKLE_HINT, PICKLE_SUFFIXES, file_hash

EMBEDDING_SUFFIXES = (".safetensors", *sorted(PICKLE_SUFFIXES))
TOWER_KEYS = {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}  # SDXL files: one key per text tower
ONE_TOWER_KEY = "emb_params"  # A1111's key for a one-tower (SD 1.x / 2.x) file


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    hash: str
    vectors: dict[str, torch.Tensor]  # "clip_l" / "clip_g" (or "any" for a one-tower file) -> [n, D]

    @property
    def length(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def made_for(self) -> str:
        """The architecture the file is for: SDXL (clip_l / clip_g), else told by the one tower's width."""
        if "any" not in self.vectors:
            return "SDXL"
        return CONDITIONING_WIDTHS.get(self.vectors["any"].shape[-1], "a one-tower model")

    def for_model(self, family: Family, widths: dict[str, int]) -> dict[str, torch.Tensor]:
        """The vectors for each text tower of a ``family`` model (tower slot -> width). Only SDXL-family models
        read clip_l / clip_g files (A1111 refuses them on SD 1.x too, though clip_l is SD 1.x's tower); a
        one-tower file fits a model with one tower of its width."""
        found = {}
        for tower, width in widths.items():
            vectors = self.vectors.get("any" if "any" in self.vectors or not family.is_sdxl else TOWER_KEYS[tower])
            if vectors is None or vectors.shape[-1] != width:
                have = ", ".join(f"{'' if k == 'any' else k + ' '}{v.shape[-1]} wide" for k, v in self.vectors.items())
                raise UserError(
                    f"embedding {self.name} (made for {self.made_for}: {have}) has no vectors for this model's "
                    f"{width}-wide text encoder ({family.label})"
                )
            found[tower] = vectors
        return found


def embedding_keys(family: Family) -> dict[str, str]:
    """Tower slot -> the key its vectors have in a file for a ``family`` model: clip_l / clip_g for SDXL-family
    models, A1111's ``emb_params`` for SD 1.x / 2.x's one tower (what ``for_model`` reads back)."""
    if family.is_sdxl:
        return {tower: TOWER_KEYS[tower] for tower in family.towers}
    return {tower: ONE_TOWER_KEY for tower in family.towers}


def name_pattern(name: str) -> re.Pattern[str]:
    """Where a prompt calls embedding ``name``: the name (or ``embedding:name``) as a whole word, any case."""
    return re.compile(rf"(?<![\w:])(?:embedding:)?{re.escape(name)}(?![\w])", re.IGNORECASE)


def read_embedding(path: Path, *, allow_pickle: bool = False) -> Embedding:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"embedding {str(path)!r} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        elif suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise UserError(f"embedding {path.name}: {PICKLE_HINT}")
            state = torch.load(path, map_location="cpu", weights_only=False)
        else:
            raise UserError(f"embedding {path.name}: use a .safetensors file")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"embedding {path.name}: not readable ({first_line(exc)})") from None
    return Embedding(path.stem, path, file_hash(path), _vectors(state, path.name))


def _vectors(state: dict, file: str) -> dict[str, torch.Tensor]:
    if "string_to_param" in state:  # A1111's pickled format
        state = {"any": next(iter(state["string_to_param"].values()))}
    elif ONE_TOWER_KEY in state:
        state = {"any": state[ONE_TOWER_KEY]}
    elif not ({"clip_l", "clip_g"} & set(state)) and len(state) == 1:  # diffusers' {"<token>": tensor}
        state = {"any": next(iter(state.values()))}
    vectors = {}
    for key, value in state.items():
        if key not in ("clip_l", "clip_g", "any") or not isinstance(value, torch.Tensor):
            raise UserError(f"embedding {file}: unknown layout (key {key!r}); expected clip_l/clip_g or one tensor")
        value = value.detach().float()
        vectors[key] = value[None] if value.ndim == 1 else value
        if vectors[key].ndim != 2 or not 1 <= vectors[key].shape[0] <= 75:
            raise UserError(f"embedding {file}: {key} has shape {list(value.shape)}; expected [vectors, width]")
    if not vectors:
        raise UserError(f"embedding {file}: no vectors in it")
    return vectors
