"""Prompts to SDXL conditioning: what the UNet's cross-attention and ``text_time`` embedding read.

Each CLIP tower's penultimate hidden states are concatenated along the feature axis (768 + 1280
= 2048 for SDXL); the second tower's pooled projection becomes ``text_embeds``. A refiner has
only the second tower. The six (base) or five (refiner) micro-conditioning numbers become
``time_ids``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from ssdxl.conditioning.weighting import parse_prompt
from ssdxl.models.components import Components

CHUNK_TOKENS = 75  # CLIP's 77 positions minus BOS and EOS


@dataclass
class Conditioning:
    """Everything the UNet needs besides the latents and timestep, for a batch of prompts."""

    embeds: torch.Tensor  # [B, 77, cross_attention_dim]
    pooled: torch.Tensor  # [B, pooled_dim]
    time_ids: torch.Tensor  # [B, 5 or 6]
    image_embeds: list[torch.Tensor] | None = None  # IP-Adapter image prompts: one tensor per adapter, [B, ...]

    def unet_kwargs(self) -> dict:
        added = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        if self.image_embeds is not None:
            added["image_embeds"] = self.image_embeds
        return {"encoder_hidden_states": self.embeds, "added_cond_kwargs": added}

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        images = None
        if parts[0].image_embeds is not None:
            images = [torch.cat(per_adapter) for per_adapter in zip(*(p.image_embeds for p in parts), strict=True)]
        return Conditioning(
            torch.cat([p.embeds for p in parts]),
            torch.cat([p.pooled for p in parts]),
            torch.cat([p.time_ids for p in parts]),
            images,
        )


def encode_text(components: Components, prompts: list[str], syntax: str = "a1111") -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds [B, 77*k, D], pooled [B, P]) for ``prompts``, weighted and in 75-token chunks.

    Prompts longer than 75 tokens (or split by ``BREAK``) are encoded chunk by chunk and the chunks
    concatenated along the sequence, as AUTOMATIC1111 does; every prompt of the batch gets as many
    chunks as the longest (empty chunks pad), so they can share one UNet batch. A prompt with no
    weighting syntax that fits in 75 tokens encodes exactly as diffusers encodes it.
    """
    fragments = [parse_prompt(p, syntax) for p in prompts]
    hidden = []
    pooled = None
    for tokenizer, encoder in (
        (components.tokenizer, components.text_encoder),
        (components.tokenizer_2, components.text_encoder_2),
    ):
        if encoder is None:
            continue
        chunked = [_chunks(tokenizer, f) for f in fragments]
        n_chunks = max(len(c) for c in chunked)
        chunked = [c + [[]] * (n_chunks - len(c)) for c in chunked]
        states, pooled_rows = [], []
        for chunks in chunked:  # one prompt at a time: batched CLIP kernels round differently from diffusers'
            ids, weights = _chunk_tensors(tokenizer, chunks)
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            prompt_states = _apply_weights(out.hidden_states[-2], weights.to(encoder.device))
            states.append(prompt_states.reshape(1, -1, prompt_states.shape[-1]))
            pooled_all = out.text_embeds if hasattr(out, "text_embeds") else out[0]
            pooled_rows.append(pooled_all[:1])  # the first chunk's, as A1111
        hidden.append(torch.cat(states))
        pooled = torch.cat(pooled_rows)
    return torch.cat(hidden, dim=-1), pooled


def chunk_count(
    components: Components, prompts: list[str], syntax: str = "a1111", single_tokens: Iterable[str] = ()
) -> int:
    """How many 77-token chunks ``encode_text(components, prompts, syntax)`` gives each prompt, by tokenizing only.

    Conditioning of different chunk counts cannot share a batch, so ``Engine.batch_key`` compares this.
    ``single_tokens`` are words the tokenizer will hold as one token each while encoding (the vectors of
    textual-inversion embeddings, added to the vocabulary only then): each counts as one token here.
    """
    tokenizer = components.tokenizer if components.text_encoder is not None else components.tokenizer_2
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
    if components.pipeline.get("requires_aesthetics_score") or components.text_encoder is None:
        values = [*original_size, *crop_top_left, aesthetic_score]
    else:
        values = [*original_size, *crop_top_left, *target_size]
    return torch.tensor([values], dtype=torch.float32)


def empty_like(embeds: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL base's unconditional input for an empty negative prompt: zeros, as it was trained."""
    return torch.zeros_like(embeds), torch.zeros_like(pooled)
