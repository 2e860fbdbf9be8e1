"""Per-request LoRAs and embeddings put on a loaded model and taken off again: ComfyUI's ``ModelPatcher`` idea, with
diffusers and peft doing the weight work.

A LoRA is loaded once into the UNet and text encoders as a named peft adapter (diffusers'
``load_lora_into_unet`` / ``load_lora_into_text_encoder``, what ``load_lora_weights`` calls; the loader mixin is
the one of the model family's pipeline, ``StableDiffusionLoraLoaderMixin`` for SD 1.x / 2.x,
``StableDiffusionXLLoraLoaderMixin`` for SDXL) and stays
resident, disabled, for later requests; past ``max_resident`` the least recently used is deleted.
``applied(loras)`` enables exactly a request's adapters at its weights (``set_adapters``) and
disables them all on the way out: a disabled peft layer calls its base layer alone, so the next
request gets the base model's output bit for bit.

``fuse=True`` merges the adapters into the base weights for the request (``fuse_lora``: no extra
matmuls per step) and puts the touched base weights back from a copy afterwards, exactly, where
unfusing would subtract and round.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ssdxl.adapters.embeddings import Embedding, name_pattern
from ssdxl.adapters.lora import LoraInfo
from ssdxl.conditioning.prompt import TOKENIZERS
from ssdxl.errors import UserError, first_line
from ssdxl.models.components import Components

PARTS = ("unet", "text_encoder", "text_encoder_2")  # every part a LoRA file may patch
MAX_LORAS = 16  # per request, and resident at once: a request's set always fits
NO_MATCH = "LoRA {name} matches no layer of this {model} model: it was made for another architecture"
_LORA_SUFFIX = re.compile(r"\.(lora(_linear_layer)?\.(down|up)|lora_[AB]|lora_magnitude_vector)(\.\w+)*$|\.alpha$")


@dataclass
class PatchReport:
    """How each LoRA of a request landed: layers patched, and layers it names that this model lacks."""

    patched: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


class AdapterPatcher:
    """Owns the adapters resident in one loaded model (the engine's base model)."""

    def __init__(self, components: Components, max_resident: int = MAX_LORAS):
        self.components = components
        self.family = components.family
        self.max_resident = max_resident
        self._resident: OrderedDict[str, tuple[int, int]] = OrderedDict()  # adapter -> (patched, skipped)
        self._pipe = None

    @property
    def parts(self) -> dict[str, torch.nn.Module]:
        """The modules a LoRA can patch in this model: the UNet and the family's text towers."""
        return {part: getattr(self.components, part) for part in ("unet", *self.family.towers)}

    @property
    def pipeline(self):
        """diffusers' pipeline of this model's family around these very modules (``Components.diffusers_pipeline``
        decides which): the object whose LoRA loader mixin and textual-inversion loader do the work."""
        if self._pipe is None:
            self._pipe = self.components.diffusers_pipeline()
        return self._pipe

    def load(self, lora: LoraInfo) -> tuple[int, int]:
        """Make ``lora`` resident (once per file content); returns (layers patched, layers skipped)."""
        name = adapter_name(lora)
        if name in self._resident:
            self._resident.move_to_end(name)
            return self._resident[name]
        with outside_inference_mode():
            while len(self._resident) >= self.max_resident:
                evicted, _ = self._resident.popitem(last=False)
                self.pipeline.delete_adapters([evicted])
            self._resident[name] = counts = self._inject(lora, name)
        return counts

    @contextmanager
    def applied(self, loras: list[tuple[LoraInfo, float]], *, fuse: bool = False) -> Iterator[PatchReport]:
        """The model with exactly ``loras`` active at their weights for the duration of the block."""
        report = PatchReport()
        if not loras:
            yield report
            return
        names, weights = [], []
        for lora, weight in loras:
            patched, skipped = self.load(lora)
            report.patched[lora.name], report.skipped[lora.name] = patched, skipped
            names.append(adapter_name(lora))
            weights.append(weight)
        pipe = self.pipeline
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=weights)
        backup = self._fuse(names) if fuse else None
        try:
            yield report
        finally:
            if backup is not None:
                self._unfuse(backup)
            pipe.disable_lora()

    def check_fit(self, embedding: Embedding) -> None:
        """A one-line UserError unless ``embedding`` has vectors for every text encoder of this model."""
        self._vectors(embedding)

    def _vectors(self, embedding: Embedding) -> dict[str, torch.Tensor]:
        """``embedding``'s vectors for each text tower of this model, by tower slot."""
        widths = {tower: _width(getattr(self.components, tower)) for tower in self.family.towers}
        return embedding.for_model(self.family, widths)

    @contextmanager
    def embeddings_loaded(self, embeddings: list[Embedding]) -> Iterator[Callable[[str], str]]:
        """The text encoders with ``embeddings`` added as tokens (diffusers' ``load_textual_inversion``, one
        token per vector) for the block; yields the prompt rewrite that puts those tokens where a prompt
        names an embedding. ``unload_textual_inversion`` takes them out again, vocabulary and all."""
        if not embeddings:
            yield lambda prompt: prompt
            return
        pipe = self.pipeline
        loaded = []
        try:
            with outside_inference_mode():  # the resized vocabulary must stay an ordinary tensor (peft needs it)
                for embedding in embeddings:
                    token = _token(embedding.name)
                    for tower, vectors in self._vectors(embedding).items():
                        encoder = getattr(self.components, tower)
                        tokenizer = getattr(self.components, TOKENIZERS[tower])
                        vectors = vectors.to(encoder.dtype)
                        pipe.load_textual_inversion(
                            {token: vectors}, token=token, tokenizer=tokenizer, text_encoder=encoder
                        )
                        loaded.append((token, vectors.shape[0], tokenizer, encoder))
            tokens = embedding_tokens(embeddings)
            yield lambda prompt: rewrite_names(prompt, tokens)
        finally:
            with outside_inference_mode():
                for token, count, tokenizer, encoder in reversed(loaded):
                    pipe.unload_textual_inversion(
                        tokens=_vector_tokens(token, count), tokenizer=tokenizer, text_encoder=encoder
                    )

    def _inject(self, lora: LoraInfo, name: str) -> tuple[int, int]:
        lora.check_family(self.family)
        pipe = self.pipeline
        try:
            state_dict, alphas = pipe.lora_state_dict(str(lora.path), unet_config=pipe.unet.config)
            wanted = {part: _module_names(state_dict, part) for part in PARTS}
        except Exception as exc:  # diffusers' converters raise ValueError / KeyError on layouts they do not know
            raise UserError(f"LoRA {lora.name}: cannot read it as a LoRA ({first_line(exc)})") from None
        if not any(wanted.values()):
            raise UserError(f"LoRA {lora.name}: no UNet or text-encoder weights in it")
        try:
            with _quiet_loaders():
                for part, module in self.parts.items():
                    if not wanted[part]:
                        continue
                    if part == "unet":
                        pipe.load_lora_into_unet(state_dict, alphas, unet=module, adapter_name=name, _pipeline=pipe)
                    else:
                        pipe.load_lora_into_text_encoder(
                            state_dict, alphas, text_encoder=module, prefix=part, adapter_name=name, _pipeline=pipe
                        )
        except Exception as exc:  # a shape mismatch, or no layer matched: the LoRA was made for another architecture
            self._remove(name)
            if "not found in the base model" in str(exc):
                raise UserError(NO_MATCH.format(name=lora.name, model=self.family.label)) from None
            raise UserError(
                f"LoRA {lora.name} does not fit this model ({self.family.label}; made for another architecture?): "
                f"{first_line(exc)}"
            ) from None
        pipe.disable_lora()  # resident but off until a request asks for it
        patched = sum(_count_layers(module, name) for module in self.parts.values())
        expected = sum(len(v) for v in wanted.values())
        if patched == 0:
            self._remove(name)
            raise UserError(NO_MATCH.format(name=lora.name, model=self.family.label))
        return patched, max(0, expected - patched)

    def _remove(self, name: str) -> None:
        for layer in list(_lora_layers(self.parts.values(), [name])):
            layer.delete_adapter(name)

    @contextmanager
    def unet_fused(self, loras: list[tuple[LoraInfo, float]]) -> Iterator[None]:
        """Inside ``applied(loras)``: the UNet alone with them merged into its weights for the block (an export of it
        with the LoRAs in), the text encoders as they were, so their output does not change in the last bits."""
        backup = self._fuse([adapter_name(lora) for lora, _ in loras], ["unet"])
        try:
            yield
        finally:
            self._unfuse(backup, ["unet"])

    def _fuse(self, names: list[str], parts: list[str] | None = None) -> dict[torch.nn.Module, torch.Tensor]:
        parts = parts or list(self.parts)
        backup = {}
        for layer in _lora_layers([self.parts[part] for part in parts], names):
            base = layer.get_base_layer()
            backup[base] = base.weight.detach().clone()
        self.pipeline.fuse_lora(components=parts, adapter_names=names)
        return backup

    def _unfuse(self, backup: dict[torch.nn.Module, torch.Tensor], parts: list[str] | None = None) -> None:
        self.pipeline.unfuse_lora(components=parts or list(self.parts))
        with torch.no_grad():
            for base, weight in backup.items():
                base.weight.copy_(weight)


@contextmanager
def _quiet_loaders() -> Iterator[None]:
    """Loading chatter off: "unexpected keys" for layers a model lacks (counted and reported instead), load
    reports, and peft's warning that a model holds several adapters, which is the point."""
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)  # diffusers logs a failed load as an error before raising it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def adapter_name(lora: LoraInfo) -> str:
    """One resident adapter per file content (peft adapter names may not contain dots)."""
    return f"lora_{lora.hash}"


@contextmanager
def outside_inference_mode() -> Iterator[None]:
    """Adapters load and unload as ordinary (autograd-free) tensors even when a generation runs in
    ``torch.inference_mode``: an inference tensor left in a module breaks the next peft injection."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def _width(encoder: torch.nn.Module) -> int:
    return encoder.get_input_embeddings().weight.shape[1]


def embedding_tokens(embeddings: list[Embedding]) -> dict[str, list[str]]:
    """The vocabulary entries each embedding's vectors get while it is loaded, by embedding name."""
    return {e.name: _vector_tokens(_token(e.name), e.length) for e in embeddings}


def rewrite_names(text: str, tokens: dict[str, list[str]]) -> str:
    """``text`` with each embedding's name (or ``embedding:name``) replaced by its vector tokens."""
    for name, vector_tokens in tokens.items():
        text = name_pattern(name).sub(" ".join(vector_tokens), text)
    return text


def _vector_tokens(token: str, count: int) -> list[str]:
    """diffusers' names for a multi-vector embedding's tokens: ``<t>``, ``<t>_1``, ..."""
    return [token] + [f"{token}_{i}" for i in range(1, count)]


def _token(name: str) -> str:
    """The vocabulary entry for an embedding: lower case (CLIP lower-cases prompts before matching)."""
    return f"<{name.lower()}>"


def _module_names(state_dict: dict[str, torch.Tensor], part: str) -> set[str]:
    """The layers ``part`` of a LoRA names, in peft's layout whatever layout diffusers' reader left it in."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    prefix = f"{part}."
    sub = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not sub:
        return set()
    sub = (
        convert_unet_state_dict_to_peft(sub)
        if part == "unet"
        else convert_state_dict_to_peft(convert_state_dict_to_diffusers(sub))
    )
    return {_LORA_SUFFIX.sub("", key).removeprefix("text_model.") for key in sub}


def _count_layers(module: torch.nn.Module, name: str) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in module.modules() if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {}))


def _lora_layers(modules: Iterable[torch.nn.Module], names: list[str]) -> Iterator[torch.nn.Module]:
    """The peft layers in ``modules`` that hold any of the adapters ``names``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in modules:
        for m in module.modules():
            if isinstance(m, BaseTunerLayer) and any(n in getattr(m, "lora_A", {}) for n in names):
                yield m
