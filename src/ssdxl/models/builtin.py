"""Models shipped inside the package: diffusers folders under ``ssdxl/builtin/<name>/``, and LoRAs, ControlNets and
tiny VAEs made for them under ``ssdxl/builtin/loras/``, ``controlnets/`` and ``tiny_vaes/``.

They are trained by the project itself (``scripts/train_builtin.sh``), so ``ssdxl generate`` works
offline on a fresh install with no ``--model``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "shapes"


def _root() -> Path:
    return Path(str(resources.files("ssdxl").joinpath("builtin")))


def names() -> list[str]:
    root = _root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def resolve(name: str) -> Path | None:
    """The folder of a built-in model, or None when ``name`` is not one (names never become paths)."""
    return _root() / name if name in names() else None


def lora_dirs() -> list[Path]:
    """The folder of built-in LoRAs (``shapes-rt``: few-step LCM-LoRAs of the built-in models), if shipped."""
    folder = _root() / "loras"
    return [folder] if folder.is_dir() else []


def controlnet_dirs() -> list[Path]:
    """The folder of built-in ControlNets (``ssdxl finetune controlnet`` made them for the built-in models)."""
    folder = _root() / "controlnets"
    return [folder] if folder.is_dir() else []


def tiny_vae(space: str) -> Path | None:
    """The shipped tiny VAE (``AutoencoderTiny`` folder made by ``ssdxl train tiny-vae``) that reads latents ``space``
    (``vae.latent_space``'s words, which its ``ssdxl.json`` records): the built-in models' and those fine-tuned from
    them, which keep their VAE. None when there is none."""
    import json

    folder = _root() / "tiny_vaes"
    for candidate in sorted(folder.iterdir()) if folder.is_dir() else ():
        info = candidate / "ssdxl.json"
        if info.is_file() and json.loads(info.read_text()).get("latent_space") == space:
            return candidate
    return None
