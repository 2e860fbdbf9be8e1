"""The OpenVINO backend: export, automatic pick-up once exported, output close to float32 PyTorch,
and PyTorch for what the traced graph does not cover."""

import json

import pytest
import torch

from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed import openvino_backend
from ssdxl.speed.bench import psnr
from ssdxl.speed.deepcache import DeepCacheUNet

pytest.importorskip("openvino")
REQUEST = GenerationRequest("a green triangle", seed=2, steps=4)


@pytest.fixture(scope="module")
def exported(tiny_dir, tmp_path_factory):
    """The tiny Vega exported into a private cache, and the float32 PyTorch image to compare with."""
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("SSDXL_CACHE", str(cache))
    torch_engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", backend="torch")
    reference = torch_engine.generate(REQUEST).images[0].image
    folder = openvino_backend.export(torch_engine.base.components, openvino_backend.default_dir(torch_engine.base.hash))
    yield folder, reference
    patch.undo()


def test_export_writes_ir_and_manifest(exported):
    folder, _ = exported
    manifest = json.loads((folder / openvino_backend.MANIFEST).read_text())
    assert manifest["format"] == openvino_backend.FORMAT and not manifest["int8"]
    assert (folder / openvino_backend.UNET_XML).is_file() and (folder / openvino_backend.DECODER_XML).is_file()


def test_auto_backend_uses_the_export_and_matches_float32(tiny_dir, exported):
    _, reference = exported
    engine = Engine.load(tiny_dir("vega"), device="cpu")
    assert engine.runtime.backend == "openvino"
    assert psnr(reference, engine.generate(REQUEST).images[0].image) > 30


def test_deepcache_and_odd_latent_sizes_run_in_pytorch(tiny_dir, exported):
    engine = Engine.load(tiny_dir("vega"), device="cpu", backend="openvino")
    unet = engine.base.components.unet
    assert engine.runtime.unet(unet, torch.zeros(1, 4, 8, 8)) is not unet
    assert engine.runtime.unet(unet, torch.zeros(1, 4, 9, 8)) is unet  # not a multiple of 4: diffusers resizes
    assert isinstance(engine.runtime.unet(unet, torch.zeros(1, 4, 8, 8), cache_interval=2), DeepCacheUNet)
    image = engine.generate(GenerationRequest("a green triangle", seed=2, steps=2, width=72, height=64)).images[0]
    assert image.image.size == (72, 64)


def test_sd15_exports_without_size_conditioning_and_matches_pytorch(tiny_dir, tmp_path, monkeypatch):
    """SD 1.x's UNet takes no pooled text or time ids: its graph has three inputs, and its images match."""
    monkeypatch.setenv("SSDXL_CACHE", str(tmp_path))
    reference = Engine.load(tiny_dir("sd15"), device="cpu", dtype="float32", backend="torch")
    request = GenerationRequest("a green triangle", seed=2, steps=3, width=64, height=64)
    engine = Engine.load(tiny_dir("sd15"), device="cpu", dtype="float32", backend="openvino")
    assert len(engine.runtime.unet(engine.base.components.unet, torch.zeros(1, 4, 8, 8))._run._model.inputs) == 3
    ours = engine.generate(request).images[0]
    assert ours.params["backend"] == "openvino"
    assert psnr(reference.generate(request).images[0].image, ours.image) > 40
