"""Server settings, and the ``NAME=PATH`` model (and ``NAME=PATH[:WEIGHT]`` model LoRA) specs ``ssdxl serve`` and
``ssdxl worker`` accept."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ssdxl.adapters.library import split_weight
from ssdxl.errors import UserError
from ssdxl.sampling.limits import LIMITS, MAX_SAMPLES, RequestLimits
from ssdxl.server import PREVIEW_EVERY


def default_data_dir() -> Path:
    """Jobs and images outlive the process, so they go under the user's data folder, not the cache."""
    root = os.environ.get("SSDXL_DATA") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "ssdxl", "server"
    )
    return Path(root)


def parse_specs(specs: list[str], option: str) -> dict[str, str]:
    """``["ssd-1b=/models/ssd1b", ...]`` as ``{"ssd-1b": "/models/ssd1b"}``."""
    return dict(_pairs(specs, option, "NAME=PATH"))


def parse_model_loras(specs: list[str], option: str = "--model-lora") -> dict[str, list[tuple[str, float]]]:
    """``["vega-rt=/loras/VegaRT.safetensors:0.9", ...]`` as ``{"vega-rt": [("/loras/VegaRT.safetensors", 0.9)]}``;
    a name given several times gets several LoRAs, in order; the weight defaults to 1."""
    parsed: dict[str, list[tuple[str, float]]] = {}
    for name, source in _pairs(specs, option, "NAME=PATH[:WEIGHT]"):
        parsed.setdefault(name, []).append(split_weight(source))
    return parsed


def _pairs(specs: list[str], option: str, shape: str) -> list[tuple[str, str]]:
    pairs = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise UserError(f"{option} must look like {shape}, got {spec!r}")
        pairs.append((name.strip(), source.strip()))
    return pairs


@dataclass
class ServerConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    store: str | None = None  # a postgresql:// URL: jobs, keys and images in PostgreSQL (else SQLite in data_dir)
    models: dict[str, str] = field(default_factory=dict)  # name -> folder, file or repo id
    refiners: dict[str, str] = field(default_factory=dict)  # model name -> refiner source
    lora_dirs: list[Path] = field(default_factory=list)  # folders whose LoRAs clients may name
    embedding_dirs: list[Path] = field(default_factory=list)  # folders whose embeddings prompts may name
    controlnet_dirs: list[Path] = field(default_factory=list)  # folders whose ControlNets / T2I-Adapters units name
    upscaler_dirs: list[Path] = field(default_factory=list)  # folders whose upscaler models hires fix and extras name
    ip_adapter_dirs: list[Path] = field(default_factory=list)  # folders whose IP-Adapter files image prompts name
    model_loras: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # model name -> its own LoRAs
    model_vaes: dict[str, str] = field(default_factory=dict)  # model name -> the VAE it decodes with (A1111 "SD VAE")
    model_tiny_vaes: dict[str, str] = field(
        default_factory=dict
    )  # model name -> tiny VAE (TAESD): previews, fast_decode
    styles_files: list[Path] = field(default_factory=list)  # A1111 styles.csv / JSON files adding prompt styles
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None  # torch intra-op threads; None keeps torch's default
    redis_url: str | None = None  # jobs run by `ssdxl worker` processes instead of in the server
    max_batch: int = MAX_SAMPLES  # images per UNet batch: by default a request's most
    limits: RequestLimits = LIMITS  # sides, steps and samples a request may ask for: the shared ones, or lower
    batch_wait: float = 0.05  # seconds an idle runner waits for concurrent requests to batch with
    max_body_bytes: int = 20 * 1024 * 1024
    sync_timeout: float = 600.0  # how long Segmind/A1111/OpenAI calls wait for their job
    link_ttl: float = 24 * 3600.0  # lifetime of signed image links (OpenAI `url`); links promising more are refused
    public_url: str | None = None  # base of links handed to clients; default: the request's own
    lease: float = 60.0  # seconds a claimed job stays claimed without a heartbeat
    max_attempts: int = 3  # runs of one job cut short by crashes before it is failed
    poll: float = 1.0  # seconds between checks for jobs from other processes and expired leases (waiters' fallback)
    preview_every: int = PREVIEW_EVERY  # steps between latent previews (and the last step); 0: none
    max_loaded_models: int | None = None  # engines kept loaded at once, least recently used unloaded; None: all
    reset_store: bool = False  # a damaged job store is moved aside and an empty one started (else: refuse to start)
