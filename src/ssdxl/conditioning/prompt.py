"""Prompts to conditioning: what the UNet's cross-attention (and SDXL's ``text_time`` embedding) read.

The model's family (``ssdxl.models.families``) says which towers speak and which layer is read. SDXL:
each CLIP tower's penultimate hidden states, concatenated along the feature axis (768 + 1280 = 2048),
the second tower's pooled projection as ``text_embeds``, and six (base) or five (refiner)
micro-conditioning numbers as ``time_ids``; a refiner has only the second tower. SD 1.x / 2.x: the one
tower's last layer after its final layer norm, nothing pooled, no ``time_ids``. A1111's clip skip reads an
earlier layer (SD 1.x / 2.x: normed as the last one is, as A1111 and diffusers do).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ssdxl.conditioning.weighting import parse_prompt
from ssdxl.models.components import Components
from ssdxl.models.families import Family

CHUNK_TOKENS = 75  # CLIP's 77 positions minus BOS and EOS
TOKENIZERS = {"text_encoder": "tokenizer", "text_encoder_2": "tokenizer_2"}  # each tower's tokenizer slot


@dataclass
class Conditioning:
    """Everything the UNet needs besides the latents and timestep, for a batch of prompts."""

    embeds: torch.Tensor  # [B, 77 * chunks, cross_attention_dim]
    pooled: torch.Tensor | None  # [B, pooled_dim] (SDXL), None for SD 1.x / 2.x
    time_ids: torch.Tensor | None  # [B, 5 or 6] (SDXL), None for SD 1.x / 2.x
    image_embeds: list[torch.Tensor] | None = None  # IP-Adapter image prompts: one tensor per adapter, [B, ...]

    def added_cond_kwargs(self) -> dict | None:
        added = {} if self.pooled is None else {"text_embeds": self.pooled, "time_ids": self.time_ids}
        if self.image_embeds is not None:
            added["image_embeds"] = self.image_embeds
        return added or None

    def unet_kwargs(self) -> dict:
        return {"encoder_hidden_states": self.embeds, "added_cond_kwargs": self.added_cond_kwargs()}

    def rows(self, index: slice | torch.Tensor) -> Conditioning:
        """The conditioning of some rows of the batch."""
        return Conditioning(
            self.embeds[index],
            _rows(self.pooled, index),
            _rows(self.time_ids, index),
            None if self.image_embeds is None else [e[index] for e in self.image_embeds],
        )

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        images = None
        if parts[0].image_embeds is not None:
            images = [torch.cat(per_adapter) for per_adapter in zip(*(p.image_embeds for p in parts), strict=True)]
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            _cat([p.pooled for p in parts]),
            _cat([p.time_ids for p in parts]),
            images,
        )


def _rows(tensor: torch.Tensor | None, index: slice | torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor[index]


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if tensors[0] is None else torch.cat(tensors)


def encode_text(
    components: Components, prompts: list[str], syntax: str = "a1111", clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(embeds [B, 77*k, D], pooled [B, P] or None) for ``prompts``, weighted and in 75-token chunks.

    Prompts longer than 75 tokens (or split by ``BREAK``) are encoded chunk by chunk and the chunks
    concatenated along the sequence, as AUTOMATIC1111 does; every prompt of the batch gets as many
    chunks as the longest (empty chunks pad), so they can share one UNet batch. A prompt with no
    weighting syntax that fits in 75 tokens encodes exactly as diffusers encodes it (its ``clip_skip`` is
    ours minus one). ``clip_skip`` is A1111's: 1 reads the family's usual layer, 2 the one before, ...
    """
    family = components.family
    fragments = [parse_prompt(p, syntax) for p in prompts]
    hidden = []
    pooled = None
    for slot in family.towers:
        tokenizer, encoder = getattr(components, TOKENIZERS[slot]), getattr(components, slot)
        chunked = [_chunks(tokenizer, f) for f in fragments]
        n_chunks = max(len(c) for c in chunked)
        chunked = [c + [[]] * (n_chunks - len(c)) for c in chunked]
        states, pooled_rows = [], []
        for chunks in chunked:  # one prompt at a time: batched CLIP kernels round differently from diffusers'
            ids, weights = _chunk_tensors(tokenizer, chunks)
            raw, tower_pooled = tower_states(encoder, ids.to(encoder.device), family, clip_skip)
            prompt_states = _apply_weights(raw, weights.to(encoder.device))
            states.append(prompt_states.reshape(1, -1, prompt_states.shape[-1]))
            if tower_pooled is not None:
                pooled_rows.append(tower_pooled[:1])  # the last tower's, of the first chunk, as A1111
        hidden.append(torch.cat(states))
        pooled = torch.cat(pooled_rows) if pooled_rows else pooled
    return torch.cat(hidden, dim=-1), pooled


def tower_states(
    encoder, ids: torch.Tensor, family: Family, clip_skip: int = 1
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One tower's states for token ``ids`` at the family's layer (moved back by ``clip_skip``), after the final
    layer norm where the family reads it so, and its pooled projection where the family's UNet takes one."""
    out = encoder(ids, output_hidden_states=True)
    states = out.hidden_states[family.hidden_layer(clip_skip)]
    states = final_norm(encoder)(states) if family.final_norm else states
    pooled = getattr(out, "text_embeds", None) if family.pooled else None  # only the projecting (last) tower has one
    return states, pooled


def final_norm(encoder) -> torch.nn.Module:
    """The tower's final layer norm (transformers 5 keeps it on the model, earlier versions on ``text_model``)."""
    return getattr(encoder, "text_model", encoder).final_layer_norm


def chunk_count(
    components: Components, prompts: list[str], syntax: str = "a1111", single_tokens: Iterable[str] = ()
) -> int:
    """How many 77-token chunks ``encode_text(components, prompts, syntax)`` gives each prompt, by tokenizing only.

    Conditioning of different chunk counts cannot share a batch, so ``Engine.batch_key`` compares this.
    ``single_tokens`` are words the tokenizer will hold as one token each while encoding (the vectors of
    textual-inversion embeddings, added to the vocabulary only then): each counts as one token here.
    """
    tokenizer = getattr(components, TOKENIZERS[components.family.towers[0]])
    words = sorted(set(single_tokens), key=len, reverse=True)
    if words:
        tokenizer = _WithWords(tokenizer, words)
    return max(len(_chunks(tokenizer, parse_prompt(p, syntax))) for p in prompts)


class _WithWords:
    """A tokenizer that takes ``words`` as single tokens, splitting the text at them first as a tokenizer does
    with the tokens added to its vocabulary (longest first)."""

    def __init__(self, tokenizer, words: list[str]):
        self.tokenizer = tokenizer
        self.words = set(words)
        self.split = re.compile("(" + "|".join(map(re.escape, words)) + ")")

    def __call__(self, text: str, **kwargs) -> SimpleNamespace:
        ids: list[int] = []
        for piece in self.split.split(text):
            if piece in self.words:
                ids.append(self.tokenizer.unk_token_id or 0)
            elif piece:
                ids.extend(self.tokenizer(piece, **kwargs).input_ids)
        return SimpleNamespace(input_ids=ids)


def _chunks(tokenizer, fragments: list[tuple[str, float | None]]) -> list[list[tuple[int, float]]]:
    """Token ids with their weights, cut into chunks of at most 75 (and at every BREAK)."""
    chunks: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for text, weight in fragments:
        if weight is None:  # BREAK
            chunks.append(current)
            current = []
            continue
        for token in tokenizer(text, add_special_tokens=False, verbose=False).input_ids:
            if len(current) == CHUNK_TOKENS:
                chunks.append(current)
                current = []
            current.append((token, weight))
    if current or not chunks:
        chunks.append(current)
    return chunks


def _chunk_tensors(tokenizer, chunks: list[list[tuple[int, float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each chunk as 77 ids: BOS, tokens, EOS, then the tokenizer's own padding."""
    ids, weights = [], []
    for chunk in chunks:
        pad = CHUNK_TOKENS - len(chunk)
        ids.append(
            [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id] + [tokenizer.pad_token_id] * pad
        )
        weights.append([1.0, *(w for _, w in chunk), 1.0] + [1.0] * pad)
    return torch.tensor(ids), torch.tensor(weights)


def _apply_weights(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's states by its weight, then restore the mean (A1111's method)."""
    if bool((weights == 1.0).all()):
        return states
    original_mean = states.float().mean()
    weighted = states.float() * weights[..., None]
    return (weighted * (original_mean / weighted.mean())).to(states.dtype)


def micro_conditioning(
    components: Components,
    original_size: tuple[int, int],
    crop_top_left: tuple[int, int],
    target_size: tuple[int, int],
    aesthetic_score: float,
) -> torch.Tensor:
    """SDXL's size (and, for a refiner, aesthetic) conditioning as one row of ``time_ids``.

    Sizes are (height, width), as in the SDXL paper and diffusers.
    """
    if components.is_refiner:
        values = [*original_size, *crop_top_left, aesthetic_score]
    else:
        values = [*original_size, *crop_top_left, *target_size]
    return torch.tensor([values], dtype=torch.float32)


def empty_like(embeds: torch.Tensor, pooled: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL base's unconditional input for an empty negative prompt: zeros, as it was trained."""
    return torch.zeros_like(embeds), None if pooled is None else torch.zeros_like(pooled)
