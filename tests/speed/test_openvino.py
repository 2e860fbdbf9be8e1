"""The OpenVINO backend: export, auto's choice (exported on first use for bfloat16 models, float32 stays in
PyTorch), output close to float32 PyTorch, PyTorch for what the traced graph does not cover, and few-step LoRAs
fused into an export of their own."""

import json
import os

import pytest
import torch

from ssdxl.adapters.synthetic import make_lora
from ssdxl.errors import UserError
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed import openvino_backend, runtime, threads
from ssdxl.speed.bench import psnr
from ssdxl.speed.deepcache import DeepCacheUNet

pytest.importorskip("openvino")
REQUEST = GenerationRequest("a green triangle", seed=2, steps=4)
SMALL_WORK = threads.SMALL_WORK


@pytest.fixture(autouse=True)
def full_size(monkeypatch):
    """Every model here counts as full size, which ``auto`` runs in OpenVINO (the tiny ones are small work)."""
    monkeypatch.setattr(threads, "SMALL_WORK", 0)


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
    engine = Engine.load(tiny_dir("vega"), device="cpu", backend="auto")
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


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDXL_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def exports(monkeypatch):
    """Counts the exports made (model and fused UNets), and still makes them."""
    calls = []
    real = openvino_backend.export

    def counted(components, folder, **kw):
        calls.append((folder, kw))
        return real(components, folder, **kw)

    monkeypatch.setattr(openvino_backend, "export", counted)
    return calls


def test_auto_exports_a_bfloat16_model_on_first_use_once(tiny_dir, private_cache, exports, monkeypatch):
    monkeypatch.delenv("SSDXL_BACKEND")
    engine = Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16")
    assert engine.runtime.backend == "openvino" and len(exports) == 1
    folder = openvino_backend.default_dir(engine.base.hash)
    assert exports[0][0] == folder and openvino_backend.is_exported(folder)
    assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name]  # written aside, then moved in place
    image = engine.generate(GenerationRequest("a green triangle", seed=2, steps=2)).images[0]
    assert image.params["backend"] == "openvino" and image.image.size == (64, 64)
    assert Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16").runtime.backend == "openvino"
    assert len(exports) == 1  # the second engine reads the cache
    exact = Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="float32")
    assert exact.runtime.backend == "torch" and len(exports) == 1  # float32: PyTorch's arithmetic, to the bit


def test_auto_keeps_small_models_in_pytorch(tiny_dir, private_cache, exports, monkeypatch):
    """A one-image run of a small model is faster in PyTorch than importing OpenVINO (docs/performance.md)."""
    monkeypatch.delenv("SSDXL_BACKEND")
    monkeypatch.setattr(threads, "SMALL_WORK", SMALL_WORK)  # the real rule
    for model in (tiny_dir("ssd-1b"), None):  # a tiny preset, the built-in model
        assert Engine.load(model, device="cpu", dtype="bfloat16").runtime.backend == "torch"
    assert not exports


def test_the_environment_sets_the_default_backend(tiny_dir, private_cache, monkeypatch):
    monkeypatch.setenv("SSDXL_BACKEND", "torch")
    assert Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16").runtime.backend == "torch"
    monkeypatch.setenv("SSDXL_BACKEND", "fast")
    with pytest.raises(UserError, match="unknown backend 'fast'"):
        Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16")


def test_a_half_written_abandoned_or_outdated_export_is_made_again(tiny_dir, private_cache, exports):
    engine = Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16", backend="torch")
    folder = openvino_backend.default_dir(engine.base.hash)
    folder.mkdir(parents=True)
    (folder / openvino_backend.UNET_XML).write_text("<half")  # a process stopped before the manifest
    abandoned, running = (folder.with_name(f"{folder.name}.partial-{pid}-0a1b2c3d") for pid in (1, os.getpid()))
    for leftover, age in ((abandoned, openvino_backend.ABANDONED_AFTER_S + 60), (running, 60)):
        leftover.mkdir()
        os.utime(leftover, (leftover.stat().st_atime - age, leftover.stat().st_mtime - age))
    Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16", backend="auto")
    assert len(exports) == 1
    assert not abandoned.exists() and running.is_dir()  # a process that died exporting leaves no gigabytes behind
    manifest = json.loads((folder / openvino_backend.MANIFEST).read_text())
    (folder / openvino_backend.MANIFEST).write_text(json.dumps({**manifest, "format": -1}))
    with pytest.raises(UserError, match="another ssdxl version"):
        openvino_backend.load_unet(folder, engine.base.components)
    assert Engine.load(tiny_dir("ssd-1b"), device="cpu", dtype="bfloat16", backend="auto").runtime.backend == "openvino"
    assert len(exports) == 2 and openvino_backend.is_exported(folder)


@pytest.fixture
def lcm_loras(tiny_dir, tmp_path):
    """An LCM-named LoRA and a plain one for the tiny Vega."""
    engine = Engine.load(tiny_dir("vega"), device="cpu", backend="torch")
    make_lora(engine.base.components, tmp_path / "lcm-lora-tiny.safetensors", seed=4, scale=0.05)
    make_lora(engine.base.components, tmp_path / "style.safetensors", seed=5, scale=0.05)
    return tmp_path


def test_a_few_step_lora_runs_fused_into_an_export_of_its_own(tiny_dir, private_cache, exports, lcm_loras):
    lcm = GenerationRequest("a green triangle", seed=3, loras=[("lcm-lora-tiny", 1.0)])
    reference = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", backend="torch", lora_dirs=(lcm_loras,))
    expected = reference.generate(lcm).images[0]
    engine = Engine.load(tiny_dir("vega"), device="cpu", backend="openvino", lora_dirs=(lcm_loras,))
    assert len(exports) == 1
    image = engine.generate(lcm).images[0]
    assert image.params["backend"] == "openvino (LoRAs fused)" and len(exports) == 2
    assert exports[1][1]["decoder"] is False  # LoRAs change the UNet only
    assert psnr(expected.image, image.image) > 30
    plain = engine.generate(REQUEST).images[0]  # the LoRA is off again: the model's own export
    assert plain.params["backend"] == "openvino"
    assert psnr(engine.generate(REQUEST).images[0].image, plain.image) == float("inf")
    # held compiled; OpenVINO's two-thread reductions at batch 1 on the tiny model's 8x8 latents run in varying order
    # (not so for the built-in model's 16x16, docs/performance.md), so the same image within a level or so
    assert psnr(engine.generate(lcm).images[0].image, image.image) > 35
    again = Engine.load(tiny_dir("vega"), device="cpu", backend="openvino", lora_dirs=(lcm_loras,))
    assert again.generate(lcm).images[0].params["backend"] == "openvino (LoRAs fused)"
    assert len(exports) == 2  # from the disk cache
    style = GenerationRequest("a green triangle", seed=3, steps=2, loras=[("style", 0.8)])
    assert again.generate(style).images[0].params["backend"] == "torch (the OpenVINO export has no LoRAs)"
    again.fuse_loras = True  # merged anyway: worth an export of its own
    assert again.generate(style).images[0].params["backend"] == "openvino (LoRAs fused)" and len(exports) == 3


def test_fused_exports_on_disk_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "MAX_ADAPTED_ON_DISK", 2)
    for i, name in enumerate(["a", "b", "c", "d.partial-7"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (i, i))
    runtime._prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c", "d.partial-7"]  # never another's export


def test_adapter_keys_ignore_order_but_not_weights():
    key = runtime.adapters_key
    assert key([("aa", 1.0), ("bb", 0.5)]) == key([("bb", 0.5), ("aa", 1.0)])
    assert key([("aa", 1.0)]) != key([("aa", 0.9)])
