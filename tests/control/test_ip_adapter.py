"""IP-Adapter image prompts through ssdxl's patcher equal stock diffusers' ``load_ip_adapter`` (float32 CPU, tiny
random SDXL and random adapters), and the UNet is exactly itself again afterwards."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file, save_file

from ssdxl.adapters.lora import inspect_lora
from ssdxl.adapters.patching import AdapterPatcher
from ssdxl.adapters.synthetic import make_lora
from ssdxl.conditioning.prompt import Conditioning
from ssdxl.control.ip_adapter import ImageEncoders, IPAdapterPatcher, load_ip_adapter
from ssdxl.control.synthetic import random_ip_adapter
from ssdxl.errors import UserError
from ssdxl.models.loading import load_components
from ssdxl.sampling.denoiser import ModelCall


@pytest.fixture(scope="module")
def components(tiny_dir):
    return load_components(tiny_dir("sdxl-base"))


@pytest.fixture(scope="module")
def adapters(components, tmp_path_factory) -> dict[str, Path]:
    """A plain and a plus adapter sharing one image encoder, as in h94's folders."""
    folder = tmp_path_factory.mktemp("ip-adapters")
    return {
        "plain": random_ip_adapter(components.unet, folder, seed=1),
        "plus": random_ip_adapter(components.unet, folder, plus=True, seed=2),
    }


@pytest.fixture(scope="module")
def encoders() -> ImageEncoders:
    return ImageEncoders()


def picture(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def unet_inputs(unet, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """CFG-shaped inputs (uncond row, cond row) for one UNet call; image embeddings are added per test."""
    g = torch.Generator().manual_seed(seed)
    config = unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    cond = Conditioning(
        torch.randn(2, 77, config.cross_attention_dim, generator=g),
        torch.randn(2, pooled, generator=g),
        torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2),
    )
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor(500), cond


def predict(unet, image_embeds: list[torch.Tensor] | None = None) -> torch.Tensor:
    x, t, cond = unet_inputs(unet)
    cond.image_embeds = image_embeds
    with torch.inference_mode():
        return ModelCall(unet)(x, t, cond)


def stock_pipeline(tiny_dir, adapter_files: list[Path], scales: list[float]):
    """diffusers' own pipeline on a fresh copy of the model with the adapters loaded its way."""
    pipe = load_components(tiny_dir("sdxl-base")).diffusers_pipeline()
    folder = adapter_files[0].parent
    pipe.load_ip_adapter(
        str(folder), subfolder="", weight_name=[f.name for f in adapter_files], image_encoder_folder="image_encoder"
    )
    pipe.set_ip_adapter_scale(scales)
    return pipe


def our_embeds(encoders, infos, images) -> list[torch.Tensor]:
    """One [2, n, ...] tensor per adapter: the uncond row, then the cond row, as the engine batches them."""
    rows = [
        encoders.embeds(info, image, device="cpu", dtype=torch.float32)
        for info, image in zip(infos, images, strict=True)
    ]
    return [torch.cat([uncond, cond]) for uncond, cond in rows]


@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_an_adapter_matches_stock_diffusers(components, adapters, encoders, tiny_dir, variant):
    info = load_ip_adapter(adapters[variant])
    assert (info.variant, info.tokens, info.cross_attention_dim) == (variant, 4 if variant == "plain" else 16, 96)
    stock = stock_pipeline(tiny_dir, [info.path], [0.7])
    image = picture(1)
    theirs_embeds = stock.prepare_ip_adapter_image_embeds([image], None, "cpu", 1, True)
    embeds = our_embeds(encoders, [info], [image])
    assert embeds[0].shape[:2] == (2, 1)
    assert torch.equal(embeds[0], theirs_embeds[0])

    patcher = IPAdapterPatcher(components.unet)
    patcher.check(info)
    with torch.inference_mode(), patcher.applied([(info, 0.7)]):  # converted inside inference mode
        ours = predict(components.unet, embeds)
    theirs = predict(stock.unet, theirs_embeds)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, predict(components.unet))

    # the whole pipeline, with our patched UNet fed our embeddings
    settings = {"num_inference_steps": 2, "guidance_scale": 5.0, "height": 64, "width": 64, "output_type": "latent"}
    ref = stock("a red circle", ip_adapter_image=image, generator=torch.Generator().manual_seed(3), **settings).images
    with torch.inference_mode(), patcher.applied([(info, 0.7)]):
        pipe = components.diffusers_pipeline()
        got = pipe(
            "a red circle", ip_adapter_image_embeds=embeds, generator=torch.Generator().manual_seed(3), **settings
        ).images
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_two_adapters_and_several_images_match_stock_diffusers(components, adapters, encoders, tiny_dir):
    infos = [load_ip_adapter(adapters["plain"]), load_ip_adapter(adapters["plus"])]
    images = [[picture(2), picture(3, (30, 60))], picture(4)]
    stock = stock_pipeline(tiny_dir, [i.path for i in infos], [0.5, 0.8])
    theirs_embeds = stock.prepare_ip_adapter_image_embeds(images, None, "cpu", 1, True)
    embeds = our_embeds(encoders, infos, images)
    assert [e.shape[1] for e in embeds] == [2, 1]
    for ours_, theirs_ in zip(embeds, theirs_embeds, strict=True):
        assert torch.equal(ours_, theirs_)
    with patcher_applied(components, [(infos[0], 0.5), (infos[1], 0.8)]):
        ours = predict(components.unet, embeds)
    assert torch.equal(ours, predict(stock.unet, theirs_embeds))


def patcher_applied(components, adapters):
    return IPAdapterPatcher(components.unet).applied(adapters)


def test_scale_zero_is_the_plain_unet_exactly(components, adapters, encoders):
    info = load_ip_adapter(adapters["plus"])
    embeds = our_embeds(encoders, [info], [picture(5)])
    with patcher_applied(components, [(info, 0.0)]):
        silent = predict(components.unet, embeds)
    assert torch.equal(silent, predict(components.unet))


def test_the_unet_is_itself_again_afterwards_even_after_an_error(components, adapters, encoders):
    unet = components.unet
    before = predict(unet)
    processors = unet.attn_processors
    infos = [load_ip_adapter(adapters["plain"]), load_ip_adapter(adapters["plus"])]
    embeds = our_embeds(encoders, infos, [picture(6), picture(7)])
    patcher = IPAdapterPatcher(unet)
    with pytest.raises(KeyError), patcher.applied([(infos[0], 1.0), (infos[1], 0.6)]):
        assert unet.config.encoder_hid_dim_type == "ip_image_proj"
        predict(unet, embeds)
        raise KeyError("the request failed")
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert all(unet.attn_processors[name] is p for name, p in processors.items())
    assert torch.equal(predict(unet), before)

    # resident: the second request reuses the converted projection and key/value layers
    seen = []
    for _ in range(2):
        with torch.no_grad(), patcher.applied([(infos[0], 1.0)]):  # and outside inference mode
            seen.append(unet.encoder_hid_proj.image_projection_layers[0])
            predict(unet, embeds[:1])
    assert seen[0] is seen[1]
    assert torch.equal(predict(unet), before)


def test_loras_stay_as_they_were(components, adapters, encoders, tmp_path):
    lora = inspect_lora(make_lora(components, tmp_path / "style.safetensors", seed=8))
    info = load_ip_adapter(adapters["plain"])
    embeds = our_embeds(encoders, [info], [picture(9)])
    loras = AdapterPatcher(components)
    plain = predict(components.unet)
    with loras.applied([(lora, 1.0)]):
        with_lora = predict(components.unet)
        with patcher_applied(components, [(info, 1.0)]):
            both = predict(components.unet, embeds)
        assert torch.equal(predict(components.unet), with_lora)
    assert not torch.equal(both, with_lora) and not torch.equal(with_lora, plain)
    with patcher_applied(components, [(info, 1.0)]):
        ip_only = predict(components.unet, embeds)
    assert not torch.equal(ip_only, both)
    assert torch.equal(predict(components.unet), plain)


def test_check_refuses_adapters_for_other_unets(components, tmp_path):
    patcher = IPAdapterPatcher(components.unet)
    config = dict(components.unet.config)
    narrow = UNet2DConditionModel.from_config({**config, "cross_attention_dim": 64})
    info = load_ip_adapter(random_ip_adapter(narrow, tmp_path / "sd15-like"))
    with pytest.raises(UserError, match="width 64.*has 96"):
        patcher.check(info)
    shallow = UNet2DConditionModel.from_config({**config, "transformer_layers_per_block": [1, 2, 2]})
    info = load_ip_adapter(random_ip_adapter(shallow, tmp_path / "other-layout"))
    with pytest.raises(UserError, match="patches 22 cross-attention layers, this model's UNet has 70"):
        patcher.check(info)
    with pytest.raises(UserError, match="another architecture"), patcher.applied([(info, 1.0)]):
        pass


def test_files_folders_pickles_and_encoders(adapters, tmp_path):
    plain = adapters["plain"]
    with pytest.raises(UserError, match="exactly one adapter file"):
        load_ip_adapter(plain.parent)
    alone = tmp_path / "sdxl_models"
    alone.mkdir()
    shutil.copy(plain, alone / plain.name)
    with pytest.raises(UserError, match="looked at.*Pass its image encoder folder"):
        load_ip_adapter(alone)
    encoder = plain.parent / "image_encoder"
    assert load_ip_adapter(alone, image_encoder=encoder).image_encoder == encoder
    shutil.copytree(encoder, tmp_path / "models" / "image_encoder")  # h94's layout: a sibling folder's encoder
    assert load_ip_adapter(alone).image_encoder == tmp_path / "models" / "image_encoder"
    with pytest.raises(UserError, match="hidden_size 32; looked at: .*no-such-folder"):
        load_ip_adapter(adapters["plus"], image_encoder=tmp_path / "no-such-folder")

    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in load_file(plain).items():  # h94's .bin files nest the two sections
        section, name = key.split(".", 1)
        nested[section][name] = value
    pickled = tmp_path / "ip-adapter.bin"
    torch.save(nested, pickled)
    with pytest.raises(UserError, match="allow-pickle"):
        load_ip_adapter(pickled, image_encoder=encoder)
    info = load_ip_adapter(pickled, image_encoder=encoder, allow_pickle=True)
    assert info.variant == "plain" and info.layer_widths == load_ip_adapter(plain).layer_widths

    face = {"image_proj.proj.0.weight": torch.zeros(8, 4), "image_proj.proj.2.weight": torch.zeros(8, 8)}
    face |= {"image_proj.norm.weight": torch.zeros(2), "ip_adapter.1.to_k_ip.weight": torch.zeros(2, 2)}
    save_file(face, tmp_path / "faceid.safetensors")
    with pytest.raises(UserError, match="FaceID.*insightface"):
        load_ip_adapter(tmp_path / "faceid.safetensors")
    save_file({"lora.weight": torch.zeros(2)}, tmp_path / "not.safetensors")
    with pytest.raises(UserError, match="not an IP-Adapter"):
        load_ip_adapter(tmp_path / "not.safetensors")


# ---------------------------------------------------------------------- through the engine


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from ssdxl.sampling.engine import Engine

    return Engine.load(tiny_dir("sdxl-base"), device="cpu", dtype="float32")


def engine_image(engine, prompts, seed=4, **kw) -> np.ndarray:
    from ssdxl.sampling.request import GenerationRequest

    request = GenerationRequest(
        "a red circle", width=64, height=64, steps=3, guidance_scale=5.0, scheduler="Euler", seed=seed,
        image_prompts=prompts, **kw,
    )  # fmt: skip
    return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)


def test_the_engine_gives_stock_diffusers_image_for_two_adapters(engine, adapters, tiny_dir):
    from ssdxl.sampling.request import ImagePrompt

    prompts = [
        ImagePrompt(str(adapters["plain"]), [picture(1)], 0.7),
        ImagePrompt(str(adapters["plus"]), [picture(2)], 0.5),
    ]
    ours = engine_image(engine, prompts)
    pipe = stock_pipeline(tiny_dir, [adapters["plain"], adapters["plus"]], [0.7, 0.5])
    out = pipe(
        "a red circle", num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
        generator=torch.Generator("cpu").manual_seed(4), ip_adapter_image=[picture(1), picture(2)],
    )  # fmt: skip
    theirs = np.asarray(out.images[0], dtype=np.int16)
    assert np.abs(ours - theirs).mean() <= 1.0
    assert np.abs(ours - engine_image(engine, [])).mean() > 1.0  # the image prompts change the picture
    assert np.array_equal(engine_image(engine, []), engine_image(engine, []))  # and leave nothing behind


def test_image_prompts_batch_and_refuse_bad_input(engine, adapters):
    from ssdxl.errors import UserError
    from ssdxl.sampling.request import GenerationRequest, ImagePrompt

    def request(seed, image):
        return GenerationRequest(
            "a red circle", width=64, height=64, steps=2, scheduler="Euler", seed=seed,
            image_prompts=[ImagePrompt(str(adapters["plus"]), [image], 0.8)],
        )  # fmt: skip

    pair = [request(1, picture(1)), request(2, picture(2))]
    for batched, alone in zip(engine.generate_batch(pair), pair, strict=True):
        solo = np.asarray(engine.generate(alone).images[0].image, dtype=np.int16)
        assert np.abs(np.asarray(batched.images[0].image, dtype=np.int16) - solo).mean() <= 1.0
    with pytest.raises(UserError, match="needs 1 to 4 pictures"):
        engine.resolve(dataclasses.replace(pair[0], image_prompts=[ImagePrompt(str(adapters["plus"]), [], 1.0)]))
    with pytest.raises(UserError, match="image prompt scale"):
        engine.resolve(
            dataclasses.replace(pair[0], image_prompts=[ImagePrompt(str(adapters["plus"]), [picture(1)], 9)])
        )
    with pytest.raises(UserError, match="DeepCache"):
        engine.resolve(dataclasses.replace(pair[0], cache_interval=3))
