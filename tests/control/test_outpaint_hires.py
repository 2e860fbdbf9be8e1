"""Outpainting keeps every original pixel and paints the new border; hires fix makes the second pass at the
larger size (latent or pixel upscale), reproducibly; bad settings fail when the request is resolved."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from ssdxl.control.outpaint import grow, parse_sides
from ssdxl.errors import FieldError, UserError
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.limits import MAX_SIDE, hires_size
from ssdxl.sampling.request import GenerationRequest, Hires


@pytest.fixture(scope="module")
def builtin_engine():
    return Engine.load(device="cpu", dtype="float32")


def picture(width=48, height=40) -> Image.Image:
    image = Image.new("RGB", (width, height), (20, 30, 120))
    ImageDraw.Draw(image).ellipse((8, 6, 36, 34), fill=(220, 30, 30))
    return image


def test_parse_sides():
    assert parse_sides("left=256,right=128") == (256, 0, 128, 0)
    assert parse_sides("x=8, top=16") == (8, 16, 8, 0)
    assert parse_sides("all=32") == (32, 32, 32, 32)
    for bad in ("left=-8", "middle=8", "left=a"):
        with pytest.raises(UserError, match="outpaint"):
            parse_sides(bad)


def test_grow_masks_the_border_only():
    canvas = grow(picture(), (16, 8, 0, 24))
    assert canvas.image.size == canvas.paint.size == canvas.keep.size == (64, 72)
    keep, paint = np.asarray(canvas.keep), np.asarray(canvas.paint)
    assert (keep[8:48, 16:64] == 0).all()  # every original pixel is kept in the composite
    assert (keep[:8] == 255).all() and (keep[48:] == 255).all() and (keep[:, :16] == 255).all()  # all generated
    assert paint[8:48, 16:64].min() == 0 and paint[20, 17] == 255  # the denoiser may touch the seam
    assert np.array_equal(np.asarray(canvas.image)[8:48, 16:64], np.asarray(picture()))


def test_outpainting_keeps_every_original_pixel(builtin_engine):
    request = GenerationRequest("a red circle", init_image=picture(), outpaint=(16, 8, 0, 24), steps=4, seed=1)
    result = builtin_engine.generate(request).images[0]
    assert result.image.size == (64, 72)
    out = np.asarray(result.image)
    assert np.array_equal(out[8:48, 16:64], np.asarray(picture()))
    assert result.params["outpaint"] == (16, 8, 0, 24) and result.params["strength"] == 1.0
    border = out[60:, :].astype(int)
    assert np.abs(border - np.asarray(grow(picture(), (16, 8, 0, 24)).image)[60:]).mean() > 2  # painted, not the fill


def test_bad_outpaint_requests_fail_when_resolved(builtin_engine):
    with pytest.raises(UserError, match="needs an init image"):
        builtin_engine.resolve(GenerationRequest("x", outpaint=(8, 0, 0, 0)))
    with pytest.raises(UserError, match="makes its own mask"):
        builtin_engine.resolve(
            GenerationRequest("x", init_image=picture(), mask_image=picture(), outpaint=(8, 0, 0, 0))
        )
    with pytest.raises(UserError, match="sides must be at most 2048"):
        builtin_engine.resolve(GenerationRequest("x", init_image=picture(), outpaint=(2048, 0, 2048, 0)))
    with pytest.raises(UserError, match="at least one above 0"):
        builtin_engine.resolve(GenerationRequest("x", init_image=picture(), outpaint=(0, 0, 0, 0)))


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_doubles_the_size_reproducibly(builtin_engine, upscaler):
    request = GenerationRequest(
        "a red circle", steps=4, seed=3, hires=Hires(scale=2, upscaler=upscaler, steps=3, strength=0.5)
    )
    first = builtin_engine.generate(request).images[0]
    assert first.image.size == (128, 128)
    assert np.array_equal(np.asarray(first.image), np.asarray(builtin_engine.generate(request).images[0].image))
    assert first.params["hires"]["upscaler"] == upscaler
    plain = builtin_engine.generate(GenerationRequest("a red circle", steps=4, seed=3)).images[0].image
    small = np.asarray(first.image.resize(plain.size, Image.LANCZOS), dtype=float)
    assert np.abs(small - np.asarray(plain, dtype=float)).mean() < 40  # the same picture, refined


def test_hires_to_a_size_and_with_a_model_upscaler(builtin_engine, tmp_path):
    from ssdxl.upscale.models import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    save_file(
        ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4).state_dict(), tmp_path / "4x-tiny.safetensors"
    )
    engine = Engine(builtin_engine.base, None, builtin_engine.device, builtin_engine.dtype, upscaler_dirs=(tmp_path,))
    request = GenerationRequest("a blue square", steps=3, seed=2, hires=Hires(width=96, upscaler="4x-tiny", steps=2))
    assert engine.generate(request).images[0].image.size == (96, 96)  # width alone keeps the aspect


def test_bad_hires_requests_fail_when_resolved(builtin_engine):
    def resolve(**kw):
        builtin_engine.resolve(GenerationRequest("x", steps=2, **kw))

    with pytest.raises(UserError, match="between 32 and 2048"):
        resolve(width=2048, height=2048, hires=Hires(scale=3))
    with pytest.raises(UserError, match="hires scale must be between 1 and 4"):
        resolve(hires=Hires(scale=5))
    with pytest.raises(UserError, match="text-to-image"):
        resolve(init_image=picture(), hires=Hires())
    with pytest.raises(UserError, match="no-such-upscaler"):
        resolve(hires=Hires(upscaler="no-such-upscaler"))
    with pytest.raises(UserError, match="hires strength"):
        resolve(hires=Hires(strength=0))


def test_the_engine_holds_hires_and_outpaint_to_the_shared_side_limit(builtin_engine):
    """The rules the server applies with its ``--max-side`` take the shared MAX_SIDE here: up to it, and no further."""
    at_limit = builtin_engine.resolve(GenerationRequest("x", steps=2, width=1024, height=1024, hires=Hires(scale=2)))
    assert hires_size(at_limit) == (MAX_SIDE, MAX_SIDE)
    with pytest.raises(FieldError, match=f"2056x2056 .*between 32 and {MAX_SIDE}") as caught:
        builtin_engine.resolve(GenerationRequest("x", steps=2, width=1024, height=1024, hires=Hires(scale=2.01)))
    assert caught.value.field == "hires"
    grown = builtin_engine.resolve(GenerationRequest("x", init_image=picture(), outpaint=(0, 0, MAX_SIDE - 48, 0)))
    assert (grown.width, grown.height) == (MAX_SIDE, 40)
    with pytest.raises(FieldError, match=f"{MAX_SIDE + 8}x40; its sides must be at most {MAX_SIDE}") as caught:
        builtin_engine.resolve(GenerationRequest("x", init_image=picture(), outpaint=(0, 0, MAX_SIDE - 40, 0)))
    assert caught.value.field == "outpaint"
