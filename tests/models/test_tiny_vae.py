"""Tiny VAEs (AutoencoderTiny / TAESD): both file layouts, pickles refused, the latent-space check, the fast decode
equal to diffusers' pipeline with an AutoencoderTiny, and tiny-VAE previews."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from ssdxl.errors import UserError
from ssdxl.models.latent_preview import TINY_PREVIEW_SIDE, preview_png, tiny_preview
from ssdxl.models.presets import get_preset
from ssdxl.models.tiny_vae import encode, load_tiny_vae, original_layout
from ssdxl.sampling.request import GenerationRequest

WIDTH = 8  # channels of the test's tiny VAEs


def tiny_autoencoder(seed: int = 0, **config) -> AutoencoderTiny:
    """A random AutoencoderTiny with TAESD's structure (4 stages, 1/3/3/3 and 3/3/3/1 blocks) at toy width."""
    torch.manual_seed(seed)
    config = {"encoder_block_out_channels": (WIDTH,) * 4, "decoder_block_out_channels": (WIDTH,) * 4, **config}
    model = AutoencoderTiny(**config)
    with torch.no_grad():  # ReLU nets at default init decode to near-constant images: spread the weights
        for p in model.parameters():
            p.mul_(1.5)
    return model.eval()


@pytest.fixture(scope="module")
def sdxl_vae() -> AutoencoderKL:
    return AutoencoderKL.from_config(get_preset("vega", "tiny").vae)


@pytest.fixture(scope="module")
def taesdxl(tmp_path_factory) -> tuple:
    """A random tiny VAE saved as the diffusers folder ``taesdxl`` (named as madebyollin's SDXL one)."""
    folder = tmp_path_factory.mktemp("tiny-vaes") / "taesdxl"
    model = tiny_autoencoder()
    model.save_pretrained(folder)
    return folder, model


# --- madebyollin's layout, written here from its description: a bare nn.Sequential per part ----------------------


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n, n), nn.ReLU(), conv(n, n), nn.ReLU(), conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


def original_decoder(w: int = WIDTH, latents: int = 4) -> nn.Sequential:
    """Latents -> pixels in [0, 1]: clamp, conv, ReLU, three stages of three blocks each followed by a 2x upsample and
    a bias-free conv, then one block and the conv to RGB."""
    stages = [m for _ in range(3) for m in (Block(w), Block(w), Block(w), nn.Upsample(scale_factor=2),
                                           conv(w, w, bias=False))]  # fmt: skip
    return nn.Sequential(Clamp(), conv(latents, w), nn.ReLU(), *stages, Block(w), conv(w, 3))


def original_encoder(w: int = WIDTH, latents: int = 4) -> nn.Sequential:
    """Pixels in [0, 1] -> latents: conv, a block, then three stages of a strided bias-free conv and three blocks,
    then the conv to the latents."""
    stages = [m for _ in range(3) for m in (conv(w, w, stride=2, bias=False), Block(w), Block(w), Block(w))]
    return nn.Sequential(conv(3, w), Block(w), *stages, conv(w, latents))


def randomized(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return module.eval()


def state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.contiguous() for k, v in module.state_dict().items()}


# --- loading ------------------------------------------------------------------------------------------------------


def test_diffusers_folder_loads_with_its_latents_named(taesdxl, sdxl_vae):
    folder, model = taesdxl
    loaded = load_tiny_vae(folder, sdxl_vae, dtype=torch.float32)
    assert loaded.name == "taesdxl" and len(loaded.hash) == 10 and loaded.has_encoder
    assert loaded.latent_space == "VAE ÷8, 4 latent channels, latent scale 0.13025"  # from its name
    latents = torch.randn(1, 4, 8, 8)
    assert torch.equal(loaded.decode(latents), model.decode(latents).sample)


def test_original_layout_files_decode_and_encode_as_madebyollins_modules(tmp_path, sdxl_vae):
    decoder, encoder = randomized(original_decoder(), 1), randomized(original_encoder(), 2)
    save_file(state(decoder), tmp_path / "taesdxl_decoder.safetensors")
    loaded = load_tiny_vae(tmp_path / "taesdxl_decoder.safetensors", sdxl_vae, dtype=torch.float32)
    assert not loaded.has_encoder and loaded.model.config.num_decoder_blocks == (3, 3, 3, 1)
    latents = torch.randn(2, 4, 8, 8) * 2
    with torch.no_grad():
        expected = decoder(latents) * 2 - 1  # TAESD draws [0, 1]; diffusers (and ssdxl) [-1, 1]
    torch.testing.assert_close(loaded.decode(latents), expected, rtol=1e-5, atol=1e-5)

    both = tmp_path / "taesdxl.safetensors"  # one file, both parts under prefixes (as ComfyUI keeps them)
    save_file({**state(decoder, "taesd_decoder."), **state(encoder, "taesd_encoder."), "vae_scale": torch.ones(())},
              both)  # fmt: skip
    loaded = load_tiny_vae(both, sdxl_vae, dtype=torch.float32)
    assert loaded.has_encoder and loaded.model.config.num_encoder_blocks == (1, 3, 3, 3)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(encode(loaded.model, pixels), encoder((pixels + 1) / 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.decode(latents), expected, rtol=1e-5, atol=1e-5)


def test_single_file_in_diffusers_names_and_back_to_the_original_layout(taesdxl, tmp_path, sdxl_vae):
    _, model = taesdxl
    save_file(state(model), tmp_path / "taesdxl-diffusers-names.safetensors")
    decoder, encoder = original_layout(model)
    save_file({k: v.contiguous() for k, v in decoder.items()}, tmp_path / "taesdxl_decoder.safetensors")
    latents = torch.randn(1, 4, 8, 8)
    for name in ("taesdxl-diffusers-names.safetensors", "taesdxl_decoder.safetensors"):
        loaded = load_tiny_vae(tmp_path / name, sdxl_vae, dtype=torch.float32)
        assert torch.equal(loaded.decode(latents), model.decode(latents).sample), name
    assert set(encoder) == {k.removeprefix("encoder.layers.") for k in model.state_dict() if k.startswith("encoder.")}


def test_pickled_files_need_allow_pickle(taesdxl, tmp_path, sdxl_vae):
    _, model = taesdxl
    decoder, _ = original_layout(model)
    torch.save(decoder, tmp_path / "taesdxl_decoder.pth")
    with pytest.raises(UserError, match="--allow-pickle"):
        load_tiny_vae(tmp_path / "taesdxl_decoder.pth", sdxl_vae, dtype=torch.float32)
    loaded = load_tiny_vae(tmp_path / "taesdxl_decoder.pth", sdxl_vae, dtype=torch.float32, allow_pickle=True)
    latents = torch.randn(1, 4, 8, 8)
    assert torch.equal(loaded.decode(latents), model.decode(latents).sample)
    folder = tmp_path / "pickled"
    model.save_pretrained(folder, safe_serialization=False)
    with pytest.raises(UserError, match="--allow-pickle"):
        load_tiny_vae(folder, sdxl_vae, dtype=torch.float32)


def test_other_latents_are_refused_with_one_line_naming_both(taesdxl, tmp_path, sdxl_vae):
    _, model = taesdxl
    decoder, _ = original_layout(model)
    save_file({k: v.contiguous() for k, v in decoder.items()}, tmp_path / "taesd_decoder.safetensors")
    with pytest.raises(UserError) as caught:
        load_tiny_vae(tmp_path / "taesd_decoder.safetensors", sdxl_vae, dtype=torch.float32)
    message = str(caught.value)
    assert "\n" not in message and "SD 1.x / 2.x latents" in message and "SDXL latents" in message
    assert "latent scale 0.18215" in message and "latent scale 0.13025" in message and "TAESDXL" in message

    recorded = tmp_path / "made-for-another"  # ssdxl's record beats the name
    model.save_pretrained(recorded)
    (recorded / "ssdxl.json").write_text(json.dumps({"latent_space": "VAE ÷8, 4 latent channels, latent scale 0.5"}))
    with pytest.raises(UserError, match=r"for other latents \(.*latent scale 0\.5\); this model's are SDXL latents"):
        load_tiny_vae(recorded, sdxl_vae, dtype=torch.float32)

    wide = tmp_path / "taef1"
    tiny_autoencoder(latent_channels=16).save_pretrained(wide)
    with pytest.raises(UserError, match="other latents \\(VAE ÷8, 16 latent channels\\)"):
        load_tiny_vae(wide, sdxl_vae, dtype=torch.float32)
    full = tmp_path / "full-vae"
    sdxl_vae.save_pretrained(full)
    with pytest.raises(UserError, match="AutoencoderKL, not AutoencoderTiny .*--vae"):
        load_tiny_vae(full, sdxl_vae, dtype=torch.float32)
    with pytest.raises(UserError, match="does not exist"):
        load_tiny_vae(tmp_path / "missing", sdxl_vae, dtype=torch.float32)
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):  # a repo id: the cache, offline here
        load_tiny_vae("ssdxl-tests/no-such-taesdxl", sdxl_vae, dtype=torch.float32)


def test_unnamed_tiny_vae_is_checked_for_shape_only(taesdxl, tmp_path, sdxl_vae):
    _, model = taesdxl
    model.save_pretrained(tmp_path / "mine")
    assert load_tiny_vae(tmp_path / "mine", sdxl_vae, dtype=torch.float32).latent_space is None


# --- the engine's fast decode against diffusers ------------------------------------------------------------------


def test_fast_decode_is_diffusers_pipeline_with_an_autoencoder_tiny(tiny_dir, taesdxl):
    """Given latents, ssdxl's fast decode is ``AutoencoderTiny.decode(latents / scaling_factor)`` post-processed as
    StableDiffusionXLPipeline does with a tiny VAE as its ``vae``; and a whole fast-decoded generation is that
    pipeline's image."""
    from ssdxl.sampling.engine import Engine

    folder, _ = taesdxl
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", tiny_vae=folder)
    tiny = AutoencoderTiny.from_pretrained(folder).eval()
    assert tiny.config.scaling_factor == 1.0  # TAESD's: it reads the UNet's latents as they are
    pipe = engine.base.components.diffusers_pipeline()
    pipe = StableDiffusionXLPipeline(**{**pipe.components, "vae": tiny})

    seen = []
    request = GenerationRequest("a red circle", width=64, height=64, steps=3, guidance_scale=5.0, scheduler="Euler",
                                seed=7, fast_decode=True)  # fmt: skip
    result = engine.generate(request, callback=lambda step, total, latents: seen.append(latents.clone()))
    ours = np.asarray(result.images[0].image, dtype=np.int16)
    with torch.no_grad():
        decoded = pipe.vae.decode(seen[-1] / pipe.vae.config.scaling_factor, return_dict=False)[0]
    theirs = np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0], dtype=np.int16)
    assert np.abs(ours - theirs).max() <= 1

    generator = torch.Generator("cpu").manual_seed(7)
    out = pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, height=64, width=64, generator=generator)
    assert np.abs(ours - np.asarray(out.images[0], dtype=np.int16)).max() <= 1
    plain = np.asarray(engine.generate(GenerationRequest(**{**vars(request), "fast_decode": False})).images[0].image)
    assert not np.array_equal(plain, ours.astype(np.uint8))  # the model's own VAE draws another image


def test_fast_decode_follows_the_tiny_vaes_scaling_factor_like_diffusers(tiny_dir, tmp_path):
    from ssdxl.sampling.engine import Engine

    folder = tmp_path / "taesdxl-scaled"
    tiny_autoencoder(seed=3, scaling_factor=2.0).save_pretrained(folder)
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", tiny_vae=folder)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    tiny = AutoencoderTiny.from_pretrained(folder).eval()
    pipe = StableDiffusionXLPipeline(**{**engine.base.components.diffusers_pipeline().components, "vae": tiny})
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    theirs = np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0], dtype=np.int16)
    with torch.inference_mode():
        ours = np.asarray(engine._decode_tiny(latents), dtype=np.int16)
    assert np.abs(ours - theirs).max() <= 1


def test_tiled_vae_tiles_the_fast_decode_too_as_diffusers_does(tiny_dir, taesdxl):
    """``--tiled-vae`` reaches the tiny VAE: above 512 pixels a side it decodes tile by tile, as diffusers'
    ``AutoencoderTiny.enable_tiling`` does."""
    from ssdxl.sampling.engine import Engine

    folder, _ = taesdxl
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", tiny_vae=folder)
    latents = torch.randn(1, 4, 80, 72, generator=torch.Generator().manual_seed(1))  # 576 wide, 640 high
    with torch.inference_mode():
        whole = np.asarray(engine._decode_tiny(latents), dtype=np.int16)
        engine.enable_tiled_vae()
        tiled = np.asarray(engine._decode_tiny(latents), dtype=np.int16)
    tiny = AutoencoderTiny.from_pretrained(folder).eval()
    tiny.enable_tiling()
    pipe = StableDiffusionXLPipeline(**{**engine.base.components.diffusers_pipeline().components, "vae": tiny})
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    theirs = np.asarray(pipe.image_processor.postprocess(decoded, output_type="pil")[0], dtype=np.int16)
    assert tiled.shape == (640, 576, 3) and np.abs(tiled - theirs).max() <= 1
    assert not np.array_equal(tiled, whole)  # the tiles' seams are blended: another picture, as with the full VAE


def test_fast_decode_without_a_tiny_vae_says_where_to_get_one(tiny_dir, taesdxl, tmp_path):
    from ssdxl.sampling.engine import Engine

    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32")
    assert engine.tiny_vae is None
    with pytest.raises(UserError) as caught:
        engine.generate(GenerationRequest("a red circle", steps=1, fast_decode=True))
    assert "\n" not in str(caught.value) and "TAESDXL" in str(caught.value) and "--tiny-vae" in str(caught.value)
    sd15 = Engine.load(tiny_dir("sd15"), device="cpu", dtype="float32")
    with pytest.raises(UserError, match="SD 1.x / 2.x.*get TAESD \\("):
        sd15.resolve(GenerationRequest("a red circle", steps=1, fast_decode=True))
    with pytest.raises(UserError, match="taesdxl is a tiny VAE for SDXL latents .* this model's are SD 1.x / 2.x"):
        Engine.load(tiny_dir("sd15"), device="cpu", dtype="float32", tiny_vae=taesdxl[0])


# --- previews -----------------------------------------------------------------------------------------------------


def test_tiny_previews_are_full_size_and_bounded(taesdxl, sdxl_vae):
    from ssdxl.models.families import SDXL_LATENTS

    loaded = load_tiny_vae(taesdxl[0], sdxl_vae, dtype=torch.float32)
    latents = torch.randn(4, 8, 6)
    with Image.open(io.BytesIO(preview_png(latents, SDXL_LATENTS, loaded))) as image:
        assert image.size == (48, 64)  # decoded: 8x the latents (the linear map: 6x8)
        expected = ((loaded.decode(latents[None])[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(image), expected.astype(np.uint8))
    with Image.open(io.BytesIO(preview_png(latents, SDXL_LATENTS))) as image:
        assert image.size == (6, 8)
    big = tiny_preview(torch.randn(1, 4, 128, 96), loaded)  # a 1024x768 image's latents: area-averaged first
    assert big.size == (TINY_PREVIEW_SIDE * 8 * 3 // 4, TINY_PREVIEW_SIDE * 8)
