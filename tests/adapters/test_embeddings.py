"""Textual inversion: SDXL two-tower files called by name, equal to diffusers' ``load_textual_inversion``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lora import SETTINGS, assert_same_image, ours, theirs

from ssdxl.adapters.synthetic import make_embedding
from ssdxl.errors import UserError
from ssdxl.models.loading import load_components
from ssdxl.sampling.request import GenerationRequest


def diffusers_with_embedding(folder, file, prompt: str, negative: str = "") -> np.ndarray:
    """Stock diffusers with the file's two towers loaded by ``load_textual_inversion`` as ``<mytok>``."""
    from safetensors.torch import load_file

    state = load_file(file)

    def load(pipe) -> None:
        for key, encoder, tokenizer in (
            ("clip_l", pipe.text_encoder, pipe.tokenizer),
            ("clip_g", pipe.text_encoder_2, pipe.tokenizer_2),
        ):
            pipe.load_textual_inversion(state[key], token="<mytok>", text_encoder=encoder, tokenizer=tokenizer)

    return theirs(folder, [], prompt, negative, prepare=load)


def test_embedding_matches_stock_diffusers_in_prompt_and_negative(engine, tiny_dir, adapter_dirs):
    file = adapter_dirs[1] / "mytok.safetensors"
    tokenizer_size = len(engine.base.components.tokenizer)
    base = ours(engine, "a mytok circle")
    positive = ours(engine, "a mytok circle", embeddings=[str(file)])
    assert not np.array_equal(base, positive)
    assert_same_image(positive, diffusers_with_embedding(tiny_dir("vega"), file, "a <mytok> circle"))
    negative = ours(engine, "a circle", negative_prompt="embedding:mytok", embeddings=[str(file)])
    assert_same_image(negative, diffusers_with_embedding(tiny_dir("vega"), file, "a circle", "<mytok>"))
    assert len(engine.base.components.tokenizer) == tokenizer_size  # the vocabulary is restored
    assert np.array_equal(base, ours(engine, "a mytok circle"))


def test_folder_embeddings_activate_by_name_and_take_weights(tiny_dir, adapter_dirs):
    from ssdxl.sampling.engine import Engine

    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", embedding_dirs=(adapter_dirs[1],))
    resolved = engine.resolve(GenerationRequest("a MyTok circle"))
    assert [p.endswith("mytok.safetensors") for p in resolved.embeddings] == [True]
    plain, weighted = ours(engine, "a mytok circle"), ours(engine, "a (mytok:1.3) circle")
    assert not np.array_equal(plain, weighted)
    params = engine.generate(GenerationRequest("a mytok circle", **SETTINGS)).images[0].params
    assert list(params["embedding_hashes"]) == ["mytok"]


def test_embeddings_that_do_not_fit_are_one_line_errors(engine, adapter_dirs, tmp_path):
    with pytest.raises(UserError, match="no vectors for this model's"):
        engine.generate(
            GenerationRequest("a sd1tok", **SETTINGS, embeddings=[str(adapter_dirs[1] / "sd1tok.safetensors")])
        )
    torch.save({"string_to_param": {"*": torch.zeros(1, 8)}}, tmp_path / "old.pt")
    with pytest.raises(UserError, match="allow-pickle"):
        engine.resolve(GenerationRequest("x", embeddings=[str(tmp_path / "old.pt")]))


def test_multi_vector_one_tower_files_read(tiny_dir, tmp_path):
    from ssdxl.adapters.embeddings import read_embedding

    vega = load_components(tiny_dir("vega"))
    embedding = read_embedding(make_embedding(vega, tmp_path / "one.safetensors", vectors=3, one_tower=True))
    assert embedding.length == 3 and set(embedding.vectors) == {"any"}
