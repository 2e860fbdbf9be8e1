"""A model's family without loading it: its configs (diffusers folder) or its tensor names (single file).

Model lists (``ssdxl models``, the server's ``/v2/models`` and ``/sdapi/v1/sd-models``, the web page) show
each model's family before anything is loaded; reading JSON files or a safetensors header costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.models.families import Family, family_of, family_of_keys
from ssdxl.models.loading import SGM_CONFIG_KEY


def peek_family(source: str | Path | None) -> Family | None:
    """The family of a built-in name, diffusers folder or ``.safetensors`` file; None where it cannot tell cheaply
    (a repo id not in the cache, a pickled file, a damaged folder)."""
    path = builtin.resolve(str(source or builtin.DEFAULT_MODEL)) or Path(str(source)).expanduser()
    try:
        if path.is_dir():
            return _folder_family(path)
        if path.is_file() and path.suffix == ".safetensors":
            return _file_family(path)
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return None
    return None


def _folder_family(folder: Path) -> Family:
    roots = builtin.component_roots(folder)

    def config(name: str, file: str) -> dict | None:
        for root in roots:
            if (root / name / file).is_file():
                return json.loads((root / name / file).read_text())
        return None

    unet = config("unet", "config.json")
    if unet is None:
        raise ValueError(f"{folder} has no unet config")
    return family_of(unet, config("text_encoder", "config.json"), config("scheduler", "scheduler_config.json"))


def _file_family(path: Path) -> Family | None:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        if SGM_CONFIG_KEY in metadata:  # the preset ssdxl wrote into the file
            configs = json.loads(metadata[SGM_CONFIG_KEY])
            return family_of(configs["unet"], configs.get("text_encoder"), configs.get("scheduler"))
        return family_of_keys(handle.keys())
