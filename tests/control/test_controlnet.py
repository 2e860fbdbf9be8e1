"""ControlNet and T2I-Adapter units: the same image as stock diffusers' pipelines for the same weights,
seed and settings (float32 CPU), one or several units, guess mode, a schedule window; batching; files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLAdapterPipeline,
    StableDiffusionXLControlNetPipeline,
    T2IAdapter,
)
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from ssdxl.errors import UserError
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import ControlUnit, GenerationRequest

SIZE = 64


@pytest.fixture(scope="module")
def base(tiny_dir):
    return Engine.load(tiny_dir("sdxl-base"), device="cpu", dtype="float32")


def random_controlnet(unet, seed: int) -> ControlNetModel:
    """``from_unet`` with its zero convolutions made random, so the residuals are not all zero."""
    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def nets(base, tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnets")
    paths = []
    for seed in (1, 2):
        net = random_controlnet(base.base.components.unet, seed)
        net.save_pretrained(root / f"cn{seed}")
        paths.append(root / f"cn{seed}")
    return paths


def control_map(shift: int = 0) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(image).rectangle((10 + shift, 12, 40 + shift, 50), outline="white", width=3)
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def ours(engine, units, *, seed=3, steps=4, guidance=5.0, prompt="a red circle"):
    request = GenerationRequest(
        prompt,
        width=SIZE,
        height=SIZE,
        steps=steps,
        guidance_scale=guidance,
        scheduler="Euler",
        seed=seed,
        controls=units,
    )
    return pixels(engine.generate(request).images[0].image)


def stock(engine, pipeline_cls, *, seed=3, steps=4, guidance=5.0, prompt="a red circle", **kwargs):
    comps = engine.base.components
    parts = dict(comps.diffusers_pipeline().components)
    parts["scheduler"] = EulerDiscreteScheduler.from_config(comps.scheduler_config)
    pipe = pipeline_cls(**parts, **kwargs.pop("model"))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator("cpu").manual_seed(seed),
        **kwargs,
    )
    return pixels(out.images[0])


def load_net(path) -> ControlNetModel:
    return ControlNetModel.from_pretrained(path).eval()


def assert_close(a: np.ndarray, b: np.ndarray, level: float = 1.0):
    assert np.abs(a - b).mean() <= level, np.abs(a - b).mean()


def test_one_controlnet_matches_stock_diffusers(base, nets):
    unit = ControlUnit(str(nets[0]), control_map(), scale=0.8)
    mine = ours(base, [unit])
    theirs = stock(
        base, StableDiffusionXLControlNetPipeline, model={"controlnet": load_net(nets[0])},
        image=control_map(), controlnet_conditioning_scale=0.8,
    )  # fmt: skip
    assert_close(mine, theirs)
    assert np.abs(mine - ours(base, [])).mean() > 1.0  # and the unit changes the picture


def test_two_controlnets_with_windows_match_stock_multi_controlnet(base, nets):
    units = [
        ControlUnit(str(nets[0]), control_map(), scale=0.6, start=0.0, end=0.5),
        ControlUnit(str(nets[1]), control_map(8), scale=1.2, start=0.25, end=1.0),
    ]
    mine = ours(base, units)
    theirs = stock(
        base, StableDiffusionXLControlNetPipeline, model={"controlnet": [load_net(p) for p in nets]},
        image=[control_map(), control_map(8)], controlnet_conditioning_scale=[0.6, 1.2],
        control_guidance_start=[0.0, 0.25], control_guidance_end=[0.5, 1.0],
    )  # fmt: skip
    assert_close(mine, theirs)


def test_guess_mode_matches_stock_diffusers(base, nets):
    mine = ours(base, [ControlUnit(str(nets[0]), control_map(), guess_mode=True)])
    theirs = stock(
        base, StableDiffusionXLControlNetPipeline, model={"controlnet": load_net(nets[0])},
        image=control_map(), guess_mode=True,
    )  # fmt: skip
    assert_close(mine, theirs)
    assert np.abs(mine - ours(base, [ControlUnit(str(nets[0]), control_map())])).mean() > 0.5


def test_t2i_adapter_matches_stock_diffusers(base, tmp_path):
    unet = base.base.components.unet
    torch.manual_seed(5)
    adapter = T2IAdapter(
        in_channels=3,
        channels=[*unet.config.block_out_channels, unet.config.block_out_channels[-1]],  # SDXL's 320/640/1280/1280
        num_res_blocks=1,
        downscale_factor=16,
        adapter_type="full_adapter_xl",
    )
    with torch.no_grad():
        for param in adapter.parameters():
            param.mul_(3.0)  # random init is tiny next to the UNet's activations
    adapter.save_pretrained(tmp_path / "t2i")
    mine = ours(base, [ControlUnit(str(tmp_path / "t2i"), control_map(), scale=0.9, end=0.5)])
    theirs = stock(
        base, StableDiffusionXLAdapterPipeline, model={"adapter": T2IAdapter.from_pretrained(tmp_path / "t2i")},
        image=control_map(), adapter_conditioning_scale=0.9, adapter_conditioning_factor=0.5,
    )  # fmt: skip
    assert_close(mine, theirs)
    assert np.abs(mine - ours(base, [])).mean() > 0.5


def test_single_file_and_name_in_a_folder_give_the_folder_image(base, nets, tmp_path):
    folder_image = ours(base, [ControlUnit(str(nets[0]), control_map())])
    state = load_net(nets[0]).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "canny-xl.safetensors")
    assert np.array_equal(
        ours(base, [ControlUnit(str(tmp_path / "canny-xl.safetensors"), control_map())]), folder_image
    )
    named = Engine(base.base, None, base.device, base.dtype)
    from ssdxl.control.models import ControlLibrary

    named.controls = ControlLibrary([tmp_path], allow_paths=False)
    assert np.array_equal(ours(named, [ControlUnit("canny-xl", control_map())]), folder_image)


def test_batched_requests_with_different_maps_equal_their_solo_images(base, nets):
    requests = [
        GenerationRequest("a red circle", width=SIZE, height=SIZE, steps=3, scheduler="Euler", seed=seed,
                          controls=[ControlUnit(str(nets[0]), control_map(shift), preprocessor=pre)])
        for seed, shift, pre in ((1, 0, "none"), (2, 12, "invert"))
    ]  # fmt: skip
    batched = base.generate_batch(requests)
    for request, result in zip(requests, batched, strict=True):
        solo = base.generate(request).images[0].image
        assert_close(pixels(result.images[0].image), pixels(solo))
    assert np.abs(pixels(batched[0].images[0].image) - pixels(batched[1].images[0].image)).mean() > 1.0
    assert batched[1].images[0].params["controls"][0]["preprocessor"] == "invert"


def test_a_control_map_of_another_size_is_resized(base, nets):
    big = control_map().resize((SIZE * 3, SIZE * 2))
    image = base.generate(
        GenerationRequest("x", width=SIZE, height=SIZE, steps=2, controls=[ControlUnit(str(nets[0]), big)])
    ).images[0]
    assert image.image.size == (SIZE, SIZE)


def test_bad_units_fail_when_resolved(base, nets, tiny_dir):
    def resolve(*units, **kw):
        base.resolve(GenerationRequest("x", width=SIZE, height=SIZE, controls=list(units), **kw))

    good = ControlUnit(str(nets[0]), control_map())
    with pytest.raises(UserError, match="at most 4 control units"):
        resolve(*[good] * 5)
    with pytest.raises(UserError, match="unknown ControlNet"):
        resolve(ControlUnit("no-such-net", control_map()))
    with pytest.raises(UserError, match="no control image"):
        resolve(ControlUnit(str(nets[0]), None))
    with pytest.raises(UserError, match="control scale"):
        resolve(ControlUnit(str(nets[0]), control_map(), scale=3))
    with pytest.raises(UserError, match="start < end"):
        resolve(ControlUnit(str(nets[0]), control_map(), start=0.6, end=0.4))
    with pytest.raises(UserError, match="not a union model"):
        resolve(ControlUnit(str(nets[0]), control_map(), control_type="canny"))
    with pytest.raises(UserError, match="DeepCache"):
        resolve(good, cache_interval=2)


def test_a_controlnet_for_another_architecture_is_a_one_line_error(base, tmp_path):
    unet = base.base.components.unet
    sd15_like = dict(ControlNetModel.from_unet(unet, load_weights_from_unet=False).config)
    sd15_like.update(cross_attention_dim=48, addition_embed_type=None, projection_class_embeddings_input_dim=None)
    ControlNetModel.from_config(sd15_like).save_pretrained(tmp_path / "sd15-cn")
    shallow = dict(ControlNetModel.from_unet(unet, load_weights_from_unet=False).config)
    shallow.update(layers_per_block=1)
    ControlNetModel.from_config(shallow).save_pretrained(tmp_path / "shallow-cn")
    for name, problem in (("sd15-cn", "text width 48"), ("shallow-cn", "hands over 6 residuals .* takes 9")):
        with pytest.raises(UserError, match=problem) as caught:
            unit = ControlUnit(str(tmp_path / name), control_map())
            base.resolve(GenerationRequest("x", width=SIZE, height=SIZE, controls=[unit]))
        assert "\n" not in str(caught.value)


def test_union_controlnet_matches_stock_diffusers(base, tmp_path):
    from diffusers import ControlNetUnionModel, StableDiffusionXLControlNetUnionPipeline

    torch.manual_seed(7)
    unet = base.base.components.unet
    config = ControlNetUnionModel.from_unet(unet, load_weights_from_unet=False).config
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    width = unet.config.block_out_channels[0]  # from_unet keeps SDXL's 320-wide task transformer
    union = ControlNetUnionModel.from_config({**config, "num_trans_channel": width, "num_proj_channel": width})
    with torch.no_grad():
        for param in union.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    union.save_pretrained(tmp_path / "union")
    mine = ours(base, [ControlUnit(str(tmp_path / "union"), control_map(), scale=0.9, control_type="canny")])
    theirs = stock(
        base, StableDiffusionXLControlNetUnionPipeline,
        model={"controlnet": ControlNetUnionModel.from_pretrained(tmp_path / "union").eval()},
        control_image=[control_map()], control_mode=[3], controlnet_conditioning_scale=0.9,
    )  # fmt: skip
    assert_close(mine, theirs)
    depth = ours(base, [ControlUnit(str(tmp_path / "union"), control_map(), scale=0.9, control_type="depth")])
    assert np.abs(mine - depth).mean() > 0.5  # the control type is an input
    with pytest.raises(UserError, match="needs a control type"):
        base.resolve(GenerationRequest("x", controls=[ControlUnit(str(tmp_path / "union"), control_map())]))


def test_units_work_with_img2img_and_inpainting(base, nets):
    init = Image.new("RGB", (SIZE, SIZE), (30, 40, 150))
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, SIZE // 2, SIZE), fill=255)
    unit = ControlUnit(str(nets[0]), control_map(), scale=1.5)
    for extra in ({"strength": 0.6}, {"mask_image": mask}):
        request = GenerationRequest("a red circle", width=SIZE, height=SIZE, steps=3, seed=2, init_image=init, **extra)
        with_unit = pixels(base.generate(dataclasses.replace(request, controls=[unit])).images[0].image)
        without = pixels(base.generate(request).images[0].image)
        assert np.abs(with_unit - without).mean() > 0.5, extra
        if "mask_image" in extra:  # the kept half is the init image, with or without control
            assert np.array_equal(with_unit[:, SIZE // 2 + 1 :], pixels(init)[:, SIZE // 2 + 1 :])
