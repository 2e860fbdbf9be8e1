"""LoRAs through the engine's seam: equal to stock diffusers' ``load_lora_weights`` on the same files,
reversible per request, several at once, refused with one line when they cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adapterkit import with_loras
from safetensors.torch import save_file

from ssdxl.adapters.synthetic import make_lora
from ssdxl.errors import UserError
from ssdxl.models.loading import load_components
from ssdxl.sampling.request import GenerationRequest

SETTINGS = dict(width=64, height=64, steps=3, guidance_scale=5.0, scheduler="Euler", seed=11)


def ours(engine, prompt="a red circle", **extra) -> np.ndarray:
    request = GenerationRequest(prompt, **{**SETTINGS, **extra})
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


def theirs(folder, loras: list[tuple[str, float]], prompt="a red circle", negative="", prepare=None) -> np.ndarray:
    """Stock diffusers on the same folder: ``load_lora_weights`` + ``set_adapters`` (or ``prepare(pipe)``)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder, dtype=torch.float32, **tokenizers())
    pipe = with_loras(pipe, loras, prepare)
    out = pipe(
        prompt,
        negative_prompt=negative or None,
        num_inference_steps=SETTINGS["steps"],
        guidance_scale=SETTINGS["guidance_scale"],
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(SETTINGS["seed"]),
    )
    return np.asarray(out.images[0], dtype=np.int16)


def tokenizers() -> dict:
    """The CLIP tokenizers (the built-in model's folder leaves them out; ssdxl builds them offline)."""
    from ssdxl.models.tokenizers import clip_tokenizer

    return {"tokenizer": clip_tokenizer("tokenizer"), "tokenizer_2": clip_tokenizer("tokenizer_2")}


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a - b)
    assert diff.mean() <= 1.0 and diff.max() <= 3, (diff.mean(), diff.max())


@pytest.mark.parametrize(
    ("files", "negative"),
    [
        ([("style", 0.7)], ""),  # diffusers/peft layout, UNet + both text encoders
        ([("kohya_style", 1.0)], "blurry"),  # kohya-ss layout with alpha
        ([("style", 0.8), ("kohya_style", -0.5)], ""),  # two at once, one negative
    ],
)
def test_loras_match_stock_diffusers(engine, tiny_dir, adapter_dirs, files, negative):
    loras = [(str(adapter_dirs[0] / f"{name}.safetensors"), w) for name, w in files]
    image = ours(engine, negative_prompt=negative, loras=loras)
    assert not np.array_equal(image, ours(engine, negative_prompt=negative))  # the LoRA does something
    assert_same_image(image, theirs(tiny_dir("vega"), loras, negative=negative))


def test_a_lora_is_gone_for_the_next_request_bit_for_bit(engine, adapter_dirs):
    base = ours(engine)
    ours(engine, loras=[(str(adapter_dirs[0] / "style.safetensors"), 1.0)])
    assert np.array_equal(base, ours(engine))


def test_fused_loras_match_unfused_and_restore_the_exact_weights(engine, adapter_dirs):
    loras = [(str(adapter_dirs[0] / "style.safetensors"), 0.9)]
    base = ours(engine)
    unfused = ours(engine, loras=loras)
    engine.fuse_loras = True
    try:
        fused = ours(engine, loras=loras)
    finally:
        engine.fuse_loras = False
    assert_same_image(fused, unfused)
    assert np.array_equal(base, ours(engine))


def test_prompt_tags_name_loras_in_a_folder(tiny_dir, adapter_dirs):
    from ssdxl.sampling.engine import Engine

    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", lora_dirs=(adapter_dirs[0],))
    tagged = engine.resolve(GenerationRequest("a red circle <lora:style:0.6>", **SETTINGS))
    assert tagged.prompt == "a red circle"
    assert tagged.loras == [(str((adapter_dirs[0] / "style.safetensors").resolve()), 0.6)]
    assert np.array_equal(ours(engine, "a red circle <lora:style:0.6>"), ours(engine, loras=[("style", 0.6)]))
    with pytest.raises(UserError, match="unknown LoRA 'nope'.*style"):
        engine.resolve(GenerationRequest("x <lora:nope:1>"))


def test_batches_share_a_lora_set_and_results_equal_solo_runs(engine, adapter_dirs):
    style = [(str(adapter_dirs[0] / "style.safetensors"), 1.0)]
    with_lora = engine.resolve(GenerationRequest("a", **SETTINGS, loras=style))
    without = engine.resolve(GenerationRequest("b", **SETTINGS))
    assert engine.batch_key(with_lora) != engine.batch_key(without)
    with pytest.raises(ValueError, match="group them"):
        engine.generate_batch([with_lora, without])
    a, b = engine.generate_batch([with_lora, engine.resolve(GenerationRequest("b", **SETTINGS, loras=style))])
    solo = engine.generate(GenerationRequest("b", **SETTINGS, loras=style)).images[0].image
    assert_same_image(np.asarray(b.images[0].image, dtype=np.int16), np.asarray(solo, dtype=np.int16))


def test_an_sdxl_lora_on_vega_applies_where_layers_exist_and_counts_the_rest(engine, adapter_dirs):
    lora = str(adapter_dirs[0] / "made_for_sdxl.safetensors")
    patched, skipped = engine.patcher.load(engine.adapters.lora(lora))
    assert patched > 0 and skipped > 0
    params = engine.generate(GenerationRequest("x", **SETTINGS, loras=[(lora, 1.0)])).images[0].params
    assert params["lora_layers"] == {"made_for_sdxl": {"patched": patched, "skipped": skipped}}


def test_loras_that_cannot_apply_are_one_line_errors(engine, tiny_dir, tmp_path):
    vega = load_components(tiny_dir("vega"))
    bad_shape = make_lora(vega, tmp_path / "wide.safetensors")
    from safetensors.torch import load_file

    wrong = {
        k: torch.zeros(v.shape[0], v.shape[1] + 8) if "lora_A" in k else v for k, v in load_file(bad_shape).items()
    }
    save_file(wrong, tmp_path / "other_arch.safetensors")
    save_file(
        {"unet.nowhere.to_q.lora_A.weight": torch.zeros(4, 8), "unet.nowhere.to_q.lora_B.weight": torch.zeros(8, 4)},
        tmp_path / "nomatch.safetensors",
    )
    save_file({"lora_unet_a.hada_w1_a": torch.zeros(2, 2)}, tmp_path / "loha.safetensors")
    save_file({"model.weight": torch.zeros(2)}, tmp_path / "notlora.safetensors")
    torch.save({"x": torch.zeros(1)}, tmp_path / "pickled.pt")
    cases = {
        "other_arch.safetensors": "does not fit this model",
        "nomatch.safetensors": "matches no layer",
        "loha.safetensors": "LoHa files are not supported",
        "notlora.safetensors": "not a LoRA",
        "pickled.pt": "allow-pickle",
        "missing.safetensors": "not found",
    }
    base = ours(engine)
    for file, message in cases.items():
        with pytest.raises(UserError, match=message) as caught:
            engine.resolve(GenerationRequest("x", loras=[(str(tmp_path / file), 1.0)]))
        assert "\n" not in str(caught.value)
    assert np.array_equal(base, ours(engine))  # a refused LoRA leaves nothing behind


def test_few_step_loras_bring_their_sampler_steps_and_guidance(engine, adapter_dirs):
    lcm = [(str(adapter_dirs[0] / "lcm-lora-tiny.safetensors"), 1.0)]
    r = engine.resolve(GenerationRequest("x", loras=lcm))
    assert (r.scheduler, r.steps, r.guidance_scale) == ("LCM", 4, 1.0)
    r = engine.resolve(GenerationRequest("x", loras=lcm, steps=6, guidance_scale=1.5, scheduler="TCD"))
    assert (r.scheduler, r.steps, r.guidance_scale) == ("TCD", 6, 1.5)
    image = engine.generate(GenerationRequest("x", loras=lcm, width=64, height=64, seed=1)).images[0]
    assert image.params["scheduler"] == "LCM" and np.isfinite(np.asarray(image.image)).all()


class _ExportedUNet:
    """Stands in for an OpenVINO UNet traced for every latent size."""

    def supports(self, shape) -> bool:
        return True


def test_deepcache_runs_the_lora_and_openvino_falls_back_and_says_so(engine, adapter_dirs):
    from ssdxl.speed.runtime import Runtime

    style = [(str(adapter_dirs[0] / "style.safetensors"), 1.0)]
    assert not np.array_equal(ours(engine, cache_interval=2, loras=style), ours(engine, cache_interval=2))
    unet = engine.base.components.unet
    runtime = Runtime("openvino", unets={id(unet): _ExportedUNet()})
    latents = torch.zeros(1, 4, 8, 8)
    assert runtime.unet(unet, latents, patched=True) is unet
    assert "OpenVINO export has no LoRAs" in runtime.unet_path(unet, latents, 1, patched=True)
    assert runtime.unet_path(unet, latents, 1, patched=False) == "openvino"
    params = engine.generate(GenerationRequest("x", **SETTINGS, loras=style)).images[0].params
    assert params["backend"] == "torch" and params["lora_hashes"] == {"style": engine.adapters.lora(style[0][0]).hash}


@pytest.mark.parametrize(("model", "fmt"), [("sdxl-base", "kohya-sgm"), ("shapes", "diffusers")])
def test_other_models_and_sgm_named_kohya_files_match_stock_diffusers(tiny_dir, tmp_path, model, fmt):
    """A tiny random SDXL (what ``init-random`` writes) with an sd-scripts-style file, and the built-in model."""
    from ssdxl.models import builtin
    from ssdxl.sampling.engine import Engine

    folder = builtin.resolve(model) or tiny_dir(model)
    lora = make_lora(load_components(folder), tmp_path / "l.safetensors", fmt=fmt, rank=8, alpha=4.0, seed=9, scale=0.1)
    engine = Engine.load(folder, device="cpu", dtype="float32")
    image = ours(engine, loras=[(str(lora), 0.9)])
    assert not np.array_equal(image, ours(engine))
    assert_same_image(image, theirs(folder, [(lora, 0.9)]))
