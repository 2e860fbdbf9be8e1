"""--vae: another VAE from a folder or a single file (LDM or diffusers names) decodes the model's latents."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import save_file

from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.models.components import build_components
from ssdxl.models.presets import get_preset
from ssdxl.models.sgm import sgm_from_components
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

LOAD = {"device": "cpu", "dtype": "float32", "backend": "torch", "optimize": False}


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """Another tiny Vega's VAE (different random weights) as a folder, an LDM file and a diffusers-named file."""
    root = tmp_path_factory.mktemp("vae")
    comps = build_components(get_preset("vega", "tiny"), seed=1)
    comps.vae.save_pretrained(root / "folder")
    state = {name: module.state_dict() for name, module in comps.modules().items()}
    ldm = sgm_from_components(state)
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items() if "first_stage" in k},
              root / "ldm.vae.safetensors")  # fmt: skip
    save_file({f"vae.{k}": v.contiguous() for k, v in state["vae"].items()}, root / "named.safetensors")
    return root


def image(engine: Engine) -> np.ndarray:
    request = GenerationRequest("a red circle", width=64, height=64, steps=2, seed=3)
    result = engine.generate(request)
    return np.asarray(result.images[0].image, dtype=np.int16), result.images[0]


def test_every_vae_format_decodes_alike_and_differs_from_the_models_own(tiny_dir, other):
    plain, _ = image(Engine.load(tiny_dir("vega"), **LOAD))
    swapped = {}
    for source in ("folder", "ldm.vae.safetensors", "named.safetensors"):
        swapped[source], made = image(Engine.load(tiny_dir("vega"), vae=other / source, **LOAD))
        assert made.params["vae"] == source and made.params["vae_hash"]
        assert f"VAE: {source}" in made.infotext
    assert np.abs(swapped["folder"] - plain).max() > 10
    assert np.array_equal(swapped["folder"], swapped["ldm.vae.safetensors"])
    assert np.array_equal(swapped["folder"], swapped["named.safetensors"])


def test_a_vae_of_another_latent_space_is_refused(tiny_dir, tmp_path):
    with pytest.raises(UserError, match=r"a VAE for other latents \(VAE ÷4"):
        Engine.load(tiny_dir("vega"), vae=builtin.resolve("shapes") / "vae", **LOAD)
    with pytest.raises(UserError, match="does not exist"):
        Engine.load(tiny_dir("vega"), vae=tmp_path / "nope.safetensors", **LOAD)
    import torch

    save_file({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="not a VAE of this model's shape"):
        Engine.load(tiny_dir("vega"), vae=tmp_path / "bad.safetensors", **LOAD)


def test_an_fp16_fix_vae_decodes_in_half_precision_where_the_original_is_upcast(tiny_dir, tmp_path):
    """SDXL's original VAE overflows in float16 (``force_upcast``); the fp16-fix VAE's folder says it need not be
    upcast, so a float16 engine decodes with it in float16."""
    import torch

    vae = build_components(get_preset("vega", "tiny"), seed=1).vae
    vae.register_to_config(force_upcast=False)
    vae.save_pretrained(tmp_path / "fp16-fix")
    half = {**LOAD, "dtype": "float16"}
    original = Engine.load(tiny_dir("vega"), **half)
    fixed = Engine.load(tiny_dir("vega"), vae=tmp_path / "fp16-fix", **half)
    assert original._vae_dtype(original.base.components.vae) == torch.float32
    assert fixed._vae_dtype(fixed.base.components.vae) == torch.float16
    assert fixed.base.components.vae.dtype == torch.float16
