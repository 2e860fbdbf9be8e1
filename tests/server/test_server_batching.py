"""Engine.generate_batch: compatible requests share one UNet batch and each gets its lone image."""

import numpy as np
import pytest
from PIL import Image

from ssdxl.sampling.request import GenerationRequest


def pixels(generated):
    return np.asarray(generated.image, dtype=np.int16)


def req(**kw):
    base = {"prompt": "a red circle on a black background", "seed": 7, "steps": 3, "width": 64, "height": 64}
    return GenerationRequest(**{**base, **kw})


def assert_same_as_alone(batched, alone, levels: int = 2):
    # float32 on CPU: a batched UNet forward differs from single ones by ~1e-6, which can move a
    # rounded 8-bit pixel by a level; bfloat16 on AMX CPUs by its coarser rounding, bit-identical elsewhere.
    assert np.abs(pixels(batched) - pixels(alone)).max() <= levels


@pytest.mark.parametrize("scheduler", ["Euler", "Euler a", "DPM++ 2M SDE"])
def test_each_request_in_a_batch_gets_the_image_it_gets_alone(engine, scheduler):
    requests = [
        req(scheduler=scheduler, seed=1, prompt="a blue square"),
        req(scheduler=scheduler, seed=2, samples=2, negative_prompt="blurry"),
        req(scheduler=scheduler, seed=3, original_size=(32, 32)),
    ]
    steps = []
    results = engine.generate_batch(requests, callback=lambda done, total, latents: steps.append(latents.shape[0]))
    assert steps == [4, 4, 4]  # one UNet batch of all four images, three steps
    assert [r.seeds for r in results] == [[1], [2, 3], [3]]
    for request, result in zip(requests, results, strict=True):
        alone = engine.generate(request)
        for batched, single in zip(result.images, alone.images, strict=True):
            assert_same_as_alone(batched, single)
            assert batched.params == single.params and batched.infotext == single.infotext


def test_img2img_and_inpaint_batch_with_their_own_init_images(engine):
    init_a = engine.generate(req(seed=4)).images[0].image
    init_b = engine.generate(req(seed=5)).images[0].image
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 32))
    for extra in ({"strength": 0.7, "steps": 4}, {"mask_image": mask}):
        requests = [req(seed=8, init_image=init_a, **extra), req(seed=9, init_image=init_b, **extra)]
        for result, request in zip(engine.generate_batch(requests), requests, strict=True):
            assert_same_as_alone(result.images[0], engine.generate(request).images[0])


def test_base_to_refiner_handoff_batches_too(engine):
    requests = [req(seed=s, steps=4, refiner=True, high_noise_fraction=0.5, prompt=f"shape {s}") for s in (1, 2)]
    for result, request in zip(engine.generate_batch(requests), requests, strict=True):
        assert result.images[0].params["refiner_model"]
        assert_same_as_alone(result.images[0], engine.generate(request).images[0])


def amx() -> bool:
    """Whether oneDNN runs bfloat16 on AMX here: its kernels block a batch of several images unlike a lone one."""
    from ssdxl.sampling.precision import cpu_flags

    return "amx_bf16" in cpu_flags()


def test_bfloat16_batch_matches_each_image_alone(tiny_dir):
    from ssdxl.sampling.engine import Engine

    bf16 = Engine.load(tiny_dir("vega"), device="cpu", dtype="bfloat16")
    requests = [req(seed=s, scheduler="Euler a") for s in (1, 2, 3)]
    for result, request in zip(bf16.generate_batch(requests), requests, strict=True):
        alone = bf16.generate(request).images[0]
        if amx():  # seen: up to 3 levels with 2 threads, a third of the pixels off by one (mean 0.3)
            assert_same_as_alone(result.images[0], alone, levels=4)
        else:  # AVX512-BF16 and AVX2 kernels compute each image of a batch as they compute it alone
            assert np.array_equal(pixels(result.images[0]), pixels(alone))


def test_incompatible_requests_are_refused(engine):
    assert engine.batch_key(engine.resolve(req(steps=3))) != engine.batch_key(engine.resolve(req(steps=4)))
    with pytest.raises(ValueError, match="batch_key"):
        engine.generate_batch([req(steps=3), req(steps=4)])


def test_raising_from_the_callback_stops_the_batch(engine):
    class Stop(Exception):
        pass

    calls = []

    def stop_after_one(done, total, latents):
        calls.append(done)
        raise Stop

    with pytest.raises(Stop):
        engine.generate_batch([req(seed=1), req(seed=2)], callback=stop_after_one)
    assert calls == [1]
