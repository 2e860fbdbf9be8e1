"""``ssdxl convert``: diffusers folder <-> one single ``.safetensors`` file in the original layout (LDM for
SD 1.x / 2.x, SGM for SDXL; see ``ssdxl.models.sgm``).

The single file carries ssdxl's component configs in its safetensors metadata, so scaled or
custom models load back exactly; files from elsewhere are recognised by their keys instead. A v-prediction
or zero-terminal-SNR model also gets ComfyUI's marker tensors, which other tools read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ssdxl.errors import UserError
from ssdxl.models.components import Components
from ssdxl.models.loading import SGM_CONFIG_KEY, load_components
from ssdxl.sampling.precision import DTYPES


def save_single_file(components: Components, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write ``components`` as one SGM/LDM-layout file, its tensors cast to ``dtype`` on the way (the modules
    themselves are left as they are)."""
    from ssdxl.models.sgm import schedule_markers, sgm_from_components

    modules = components.modules().items()
    state = sgm_from_components({name: m.state_dict() for name, m in modules}, components.family)
    cast = dtype is not None
    state = {k: (v.to(dtype) if cast and v.is_floating_point() else v).detach().contiguous() for k, v in state.items()}
    state |= schedule_markers(components.scheduler_config)
    metadata = {SGM_CONFIG_KEY: json.dumps(dataclasses.asdict(components.to_preset())), "format": "pt"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)
    return path


def convert_model(
    source: str | os.PathLike, destination: Path, *, dtype: str = "float32", allow_pickle: bool = False
) -> Path:
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    torch_dtype: torch.dtype = DTYPES[dtype]
    if destination.exists() and (destination.is_file() or any(destination.iterdir())):
        raise UserError(f"{destination} already exists; choose a new path")
    components = load_components(source, dtype=torch_dtype, allow_pickle=allow_pickle)
    if destination.suffix.lower() == ".safetensors":
        return save_single_file(components, destination)
    if destination.suffix:
        raise UserError(f"destination must be a .safetensors file or a folder, got {destination.name}")
    return components.save(destination)
