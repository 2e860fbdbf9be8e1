"""How an engine runs its UNets and VAE decoders: eager PyTorch tuned for the device, or OpenVINO.

``Runtime.prepare`` is called once when an engine loads. The ``auto`` backend takes OpenVINO on a CPU
(``prefers_openvino``: installed, a weights file to key the export by, a bfloat16 model of full size), exporting
the model on first use into a cache keyed by the weights' hash; float32 models stay in eager PyTorch, whose float32
arithmetic is diffusers' to the bit, and so do small models and GPUs. ``SSDXL_BACKEND`` sets the default for
callers that do not choose. Per request the engine asks for the UNet to call (``unet``), optionally wrapped for
DeepCache, and for a decoder (``decoder``). Requests whose LoRAs can be merged for good (a few-step LoRA, or
``fuse_loras``) run an export of the UNet with them fused in (``has_adapted``, ``export_adapted``), cached by the
LoRAs' hashes and weights. On a CPU each request gets its thread count (``use_threads``: one for a small UNet's
work, all cores for a large one), set when the request starts and again whenever a UNet is asked for, so nothing
depends on what ran before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssdxl.errors import UserError
from ssdxl.models.components import Components
from ssdxl.speed import openvino_backend, threads, tuning
from ssdxl.speed.deepcache import DeepCacheUNet

BACKENDS = ("auto", "torch", "openvino")
BACKEND_ENV = "SSDXL_BACKEND"  # the backend of callers that pass none (the tests run eager PyTorch unless they ask)
MAX_ADAPTED = 2  # UNets with LoRAs fused held compiled at once (each holds its own copy of the weights)
MAX_ADAPTED_ON_DISK = 4  # fused exports kept per model; the least recently used beyond this are deleted


@dataclass
class Runtime:
    """The chosen backend and, for OpenVINO, the compiled stand-ins keyed by the torch module they replace."""

    backend: str = "torch"
    unets: dict[int, openvino_backend.OpenVINOUNet] = field(default_factory=dict)
    decoders: dict[int, openvino_backend.OpenVINODecoder] = field(default_factory=dict)
    cpu: bool = False  # thread counts are chosen per UNet and size (``speed.threads``)
    folders: dict[int, Path] = field(default_factory=dict)  # each exported UNet's export folder
    adapted: OrderedDict[tuple[int, str], openvino_backend.OpenVINOUNet] = field(default_factory=OrderedDict)
    progress: bool = False  # a progress bar on stderr while something is exported

    @classmethod
    def prepare(
        cls,
        models: list[tuple[Components, str]],
        device: torch.device,
        *,
        backend: str | None = None,
        optimize: bool = True,
        progress: bool = False,
    ) -> Runtime:
        """``models`` pairs each loaded model with its weights hash (which names its OpenVINO export);
        ``backend`` None: ``$SSDXL_BACKEND``, else auto; ``progress`` shows a bar on stderr while a model is
        exported."""
        backend = backend or os.environ.get(BACKEND_ENV) or "auto"
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
        if optimize:
            for components, _ in models:
                tuning.apply(components, device)
        folders = [openvino_backend.default_dir(model_hash) if model_hash else None for _, model_hash in models]
        if backend == "auto":
            usable = device.type == "cpu" and openvino_backend.available() and all(folders)
            backend = "openvino" if usable and prefers_openvino([c for c, _ in models]) else "torch"
        runtime = cls(backend, cpu=device.type == "cpu", progress=progress)
        if backend == "openvino":
            if device.type != "cpu":
                raise UserError("the OpenVINO backend runs on the CPU; use --device cpu or --backend torch")
            for (components, _), folder in zip(models, folders, strict=True):
                runtime.add_openvino(components, _export_if_missing(components, folder, progress))
        return runtime

    def add_openvino(self, components: Components, folder: Path) -> None:
        unet, decoder = openvino_backend.load(folder, components)
        self.unets[id(components.unet)] = unet
        self.decoders[id(components.vae)] = decoder
        self.folders[id(components.unet)] = folder

    def unet(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        cache_interval: int = 1,
        patched: bool = False,
        adapters: str | None = None,
    ) -> Callable[..., Any]:
        """What the denoising loop calls for ``unet``: DeepCache needs the PyTorch module's blocks (and runs
        its adapters); latent sizes the OpenVINO graph was not traced for (not a multiple of the UNet's
        downsampling) and ``patched`` UNets (control residuals, image prompts, LoRAs not fused into an export)
        run in PyTorch too. ``adapters``: the key of a fused export loaded by ``adapted``."""
        self.use_threads(unet, latents.shape[-2] * latents.shape[-1])
        if cache_interval > 1:
            return DeepCacheUNet(unet, cache_interval)
        if adapters is not None:
            replacement = self.adapted.get((id(unet), adapters))
        else:
            replacement = None if patched else self.unets.get(id(unet))
        if replacement is not None and replacement.supports(latents.shape):
            return replacement
        return unet

    def use_threads(self, unet: torch.nn.Module, latent_pixels: int) -> None:
        """Run on the thread count ``unet``'s work at ``latent_pixels`` calls for (unless the user set one)."""
        if self.cpu and not threads.pinned():
            torch.set_num_threads(threads.threads_for(unet, latent_pixels))

    def unet_path(
        self,
        unet: torch.nn.Module,
        latents: torch.Tensor,
        cache_interval: int,
        patched: bool,
        adapters: str | None = None,
    ) -> str:
        """How ``unet`` runs for a request (the choice ``unet`` makes), as recorded in its result: says so when
        adapters forced PyTorch where an OpenVINO export exists."""
        chosen = self.unet(unet, latents, cache_interval, patched, adapters)
        if isinstance(chosen, DeepCacheUNet):
            return "torch+deepcache"
        if chosen is not unet:
            return "openvino (LoRAs fused)" if adapters is not None else "openvino"
        return "torch (the OpenVINO export has no LoRAs)" if patched and id(unet) in self.unets else "torch"

    def fusable(self, unet: torch.nn.Module) -> bool:
        """Whether LoRAs on ``unet`` can run in an OpenVINO export with them fused in."""
        return id(unet) in self.folders

    def has_adapted(self, components: Components, key: str) -> bool:
        """Whether the fused export ``key`` of this model is ready to run, loading it from disk if it was made before
        (else the caller fuses the LoRAs and calls ``export_adapted``)."""
        slot = (id(components.unet), key)
        if slot in self.adapted:
            self.adapted.move_to_end(slot)
            return True
        folder = self.adapted_dir(components.unet, key)
        if not openvino_backend.is_exported(folder):
            return False
        self._hold(slot, openvino_backend.load_unet(folder, components), folder)
        return True

    def export_adapted(self, components: Components, key: str) -> None:
        """Export ``components``' UNet as it is now (the caller has fused the LoRAs named by ``key`` into it)."""
        folder = self.adapted_dir(components.unet, key)
        openvino_backend.export(components, folder, decoder=False, progress=self.progress)
        self._hold((id(components.unet), key), openvino_backend.load_unet(folder, components), folder)
        _prune(folder.parent, MAX_ADAPTED_ON_DISK)

    def adapted_dir(self, unet: torch.nn.Module, key: str) -> Path:
        """Where the fused export ``key`` of ``unet`` lives: beside the model's own export."""
        return fused_dir(self.folders[id(unet)], key)

    def _hold(self, slot: tuple[int, str], unet: openvino_backend.OpenVINOUNet, folder: Path) -> None:
        self.adapted[slot] = unet
        while len(self.adapted) > MAX_ADAPTED:
            self.adapted.popitem(last=False)
        folder.touch()  # least recently used first when the disk cache is pruned

    def forget_decoder(self, vae: torch.nn.Module) -> None:
        """Stop using the exported decoder of ``vae`` (the model is getting another VAE, which decodes in PyTorch)."""
        self.decoders.pop(id(vae), None)

    def decoder(self, vae: torch.nn.Module, latents: torch.Tensor) -> openvino_backend.OpenVINODecoder | None:
        """The OpenVINO decoder for ``vae``, unless the latents are large enough for PyTorch's tiled
        decode (which bounds memory; the OpenVINO graph decodes in one piece)."""
        if getattr(vae, "use_tiling", False) and max(latents.shape[-2:]) > vae.tile_latent_min_size:
            return None
        return self.decoders.get(id(vae))


def prefers_openvino(models: list[Components]) -> bool:
    """Whether ``auto`` runs these models in OpenVINO on a CPU: where they compute in a low precision (a float32
    model asks for PyTorch's exact arithmetic) and their UNet's work at their default size is not small (the rule
    of ``speed.threads``). A full-size step is faster in OpenVINO (a Segmind-Vega step at 512^2 1.25x eager
    bfloat16's); a small model's images are too (the built-in model's 3x, 121 against 380 ms), but one ``ssdxl
    generate`` run is not: importing OpenVINO and loading the compiled graph cost more than the image, 6.1 against
    5.4 s (docs/performance.md, "The first command"), so small models stay in PyTorch unless asked
    (``SSDXL_BACKEND=openvino`` for a server of them)."""
    return all(c.unet.dtype != torch.float32 and not threads.small(c.unet, _default_latent_pixels(c)) for c in models)


def _default_latent_pixels(components: Components) -> int:
    defaults, scale = components.defaults, components.vae_scale
    return (defaults.get("width", 1024) // scale) * (defaults.get("height", 1024) // scale)


def adapters_key(loras: list[tuple[str, float]]) -> str:
    """The name of a fused export: the LoRAs' content hashes and weights, in any order."""
    text = ";".join(f"{lora_hash}:{weight!r}" for lora_hash, weight in sorted(loras))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fused_dir(model_folder: Path, key: str) -> Path:
    """The folder of a model's export with the LoRA set ``key`` fused in (``ssdxl export openvino --lora`` writes
    there too, so the runtime finds it): beside the model's own export, which a new export replaces whole."""
    return model_folder.with_name(f"{model_folder.name}.loras") / key


def lora_set_dir(model_folder: Path, loras: list[tuple[Any, float]]) -> Path:
    """``fused_dir`` of a LoRA set given as (adapter info with its content ``hash``, weight) pairs."""
    return fused_dir(model_folder, adapters_key([(info.hash, weight) for info, weight in loras]))


def _prune(folder: Path, keep: int) -> None:
    finished = (p for p in folder.iterdir() if p.is_dir() and ".partial-" not in p.name and ".old-" not in p.name)
    exports = sorted(finished, key=lambda p: p.stat().st_mtime, reverse=True)
    for old in exports[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _export_if_missing(components: Components, folder: Path | None, progress: bool) -> Path:
    if folder is None:
        raise UserError("this model has no weights file to key an OpenVINO export by; use --backend torch")
    if not openvino_backend.is_exported(folder):
        openvino_backend.export(components, folder, progress=progress)
    return folder
