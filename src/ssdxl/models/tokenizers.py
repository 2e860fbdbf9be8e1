"""The real CLIP BPE tokenizer, built offline from the merges file OpenAI's CLIP (and open_clip) ship.

``data/bpe_simple_vocab_16e6.txt.gz`` comes from open-clip-torch 3.3.0 (MIT licence,
Copyright (c) 2012-2021 Gabriel Ilharco et al.; the merges are OpenAI CLIP's). The vocabulary is
derived exactly as CLIP's ``SimpleTokenizer`` does: 256 byte characters, the same with ``</w>``,
one entry per merge, then the two special tokens: 49,408 ids, equal to SDXL's tokenizers.
SDXL's first tokenizer pads with ``<|endoftext|>``, its second (OpenCLIP bigG) with ``!``.
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources

from transformers import CLIPTokenizer

MAX_LENGTH = 77
N_MERGES = 49152 - 256 - 2
PAD_TOKENS = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}


def _bytes_to_unicode() -> list[str]:
    """CLIP's reversible map of the 256 byte values to printable characters, in vocabulary order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@cache
def _vocab_and_merges() -> tuple[dict[str, int], tuple[str, ...]]:
    raw = resources.files("ssdxl.models").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = tuple(lines[1 : N_MERGES + 1])
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(slot: str = "tokenizer") -> CLIPTokenizer:
    """A fresh CLIP tokenizer configured as SDXL's ``tokenizer`` or ``tokenizer_2``."""
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=[tuple(m.split(" ")) for m in merges],
        pad_token=PAD_TOKENS[slot],
        model_max_length=MAX_LENGTH,
    )
