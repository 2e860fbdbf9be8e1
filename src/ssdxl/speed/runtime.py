"""How an engine runs its UNets and VAE decoders: eager PyTorch tuned for the device, or OpenVINO.

``Runtime.prepare`` is called once when an engine loads. The ``auto`` backend takes OpenVINO on a
CPU when the package is installed and the model has been exported (``ssdxl export openvino``);
otherwise eager PyTorch with the settings in ``tuning``. Per request the engine asks for the UNet
to call (``unet``), optionally wrapped for DeepCache, and for a decoder (``decoder``). On a CPU each
request gets its thread count (``use_threads``: one for a small UNet's work, all cores for a large one), set
when the request starts and again whenever a UNet is asked for, so nothing depends on what ran before.
"""

from __future__ import annotations

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


@dataclass
class Runtime:
    """The chosen backend and, for OpenVINO, the compiled stand-ins keyed by the torch module they replace."""

    backend: str = "torch"
    unets: dict[int, openvino_backend.OpenVINOUNet] = field(default_factory=dict)
    decoders: dict[int, openvino_backend.OpenVINODecoder] = field(default_factory=dict)
    cpu: bool = False  # thread counts are chosen per UNet and size (``speed.threads``)

    @classmethod
    def prepare(
        cls,
        models: list[tuple[Components, str]],
        device: torch.device,
        *,
        backend: str = "auto",
        optimize: bool = True,
    ) -> Runtime:
        """``models`` pairs each loaded model with its weights hash (which names its OpenVINO export)."""
        if backend not in BACKENDS:
            raise UserError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
        if optimize:
            for components, _ in models:
                tuning.apply(components, device)
        folders = [openvino_backend.default_dir(model_hash) if model_hash else None for _, model_hash in models]
        if backend == "auto":
            usable = device.type == "cpu" and openvino_backend.available()
            backend = "openvino" if usable and all(f and openvino_backend.is_exported(f) for f in folders) else "torch"
        runtime = cls(backend, cpu=device.type == "cpu")
        if backend == "openvino":
            if device.type != "cpu":
                raise UserError("the OpenVINO backend runs on the CPU; use --device cpu or --backend torch")
            for (components, _), folder in zip(models, folders, strict=True):
                runtime.add_openvino(components, _export_if_missing(components, folder))
        return runtime

    def add_openvino(self, components: Components, folder: Path) -> None:
        unet, decoder = openvino_backend.load(folder, components)
        self.unets[id(components.unet)] = unet
        self.decoders[id(components.vae)] = decoder

    def unet(
        self, unet: torch.nn.Module, latents: torch.Tensor, cache_interval: int = 1, patched: bool = False
    ) -> Callable[..., Any]:
        """What the denoising loop calls for ``unet``: DeepCache needs the PyTorch module's blocks (and runs
        its adapters); latent sizes the OpenVINO graph was not traced for (not a multiple of the UNet's
        downsampling) and ``patched`` UNets (per-request LoRAs, which the exported graph lacks) run in
        PyTorch too."""
        self.use_threads(unet, latents.shape[-2] * latents.shape[-1])
        if cache_interval > 1:
            return DeepCacheUNet(unet, cache_interval)
        replacement = self.unets.get(id(unet))
        if not patched and replacement is not None and replacement.supports(latents.shape):
            return replacement
        return unet

    def use_threads(self, unet: torch.nn.Module, latent_pixels: int) -> None:
        """Run on the thread count ``unet``'s work at ``latent_pixels`` calls for (unless the user set one)."""
        if self.cpu and not threads.pinned():
            torch.set_num_threads(threads.threads_for(unet, latent_pixels))

    def unet_path(self, unet: torch.nn.Module, latents: torch.Tensor, cache_interval: int, patched: bool) -> str:
        """How ``unet`` runs for a request (the choice ``unet`` makes), as recorded in its result: says so when
        adapters forced PyTorch where an OpenVINO export exists."""
        chosen = self.unet(unet, latents, cache_interval, patched)
        if isinstance(chosen, DeepCacheUNet):
            return "torch+deepcache"
        if chosen is not unet:
            return "openvino"
        return "torch (the OpenVINO export has no LoRAs)" if patched and id(unet) in self.unets else "torch"

    def forget_decoder(self, vae: torch.nn.Module) -> None:
        """Stop using the exported decoder of ``vae`` (the model is getting another VAE, which decodes in PyTorch)."""
        self.decoders.pop(id(vae), None)

    def decoder(self, vae: torch.nn.Module, latents: torch.Tensor) -> openvino_backend.OpenVINODecoder | None:
        """The OpenVINO decoder for ``vae``, unless the latents are large enough for PyTorch's tiled
        decode (which bounds memory; the OpenVINO graph decodes in one piece)."""
        if getattr(vae, "use_tiling", False) and max(latents.shape[-2:]) > vae.tile_latent_min_size:
            return None
        return self.decoders.get(id(vae))


def _export_if_missing(components: Components, folder: Path | None) -> Path:
    if folder is None:
        raise UserError("this model has no weights file to key an OpenVINO export by; use --backend torch")
    if not openvino_backend.is_exported(folder):
        openvino_backend.export(components, folder)
    return folder
