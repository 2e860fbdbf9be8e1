"""Models shipped inside the package: diffusers folders under ``ssdxl/builtin/<name>/``, and LoRAs, ControlNets and
tiny VAEs made for them under ``ssdxl/builtin/loras/``, ``controlnets/`` and ``tiny_vaes/``.

They are trained by the project itself (``scripts/train_builtin.sh``), so ``ssdxl generate`` works
offline on a fresh install with no ``--model``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ssdxl.errors import UserError

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


def component_roots(folder: Path) -> list[Path]:
    """Where a model folder's components are looked for, in order: the folder, then each built-in model it borrows
    the ones it lacks from (``ssdxl.json``'s ``components_from``, followed on: a student of ``shapes-xl`` takes its VAE
    from ``shapes-xl`` and, through it, the text encoders ``shapes-xl`` takes from ``shapes``)."""
    roots = [folder]
    while True:
        info = roots[-1] / "ssdxl.json"
        name = json.loads(info.read_text()).get("components_from") if info.is_file() else None
        if name is None:
            return roots
        lender = resolve(str(name))
        if lender is None or lender.resolve() in {root.resolve() for root in roots}:
            raise UserError(f"{roots[-1]}: components_from names {name!r}, which is not another built-in model")
        roots.append(lender)


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
    folder = _root() / "tiny_vaes"
    for candidate in sorted(folder.iterdir()) if folder.is_dir() else ():
        info = candidate / "ssdxl.json"
        if info.is_file() and json.loads(info.read_text()).get("latent_space") == space:
            return candidate
    return None
