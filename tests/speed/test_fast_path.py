"""The default CPU path (bfloat16 where the CPU has it, channels-last) draws the float32 picture."""

import pytest
import torch

from ssdxl.sampling.engine import Engine
from ssdxl.sampling.precision import cpu_has_fast_bf16
from ssdxl.sampling.request import GenerationRequest
from ssdxl.speed.bench import psnr

REQUEST = GenerationRequest("a blue square", seed=5, steps=5)


@pytest.fixture(scope="module")
def reference(tiny_dir):
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", optimize=False, backend="torch")
    return engine.generate(REQUEST).images[0].image


def test_tuning_keeps_float32_output(tiny_dir, reference):
    engine = Engine.load(tiny_dir("vega"), device="cpu", dtype="float32", backend="torch")
    assert engine.base.components.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert psnr(reference, engine.generate(REQUEST).images[0].image) > 60


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="bfloat16 is the default only on CPUs with AVX512-BF16/AMX")
def test_default_cpu_path_is_bfloat16_and_close_to_float32(tiny_dir, reference):
    engine = Engine.load(tiny_dir("vega"), device="cpu", backend="torch")
    assert engine.dtype == torch.bfloat16
    assert psnr(reference, engine.generate(REQUEST).images[0].image) > 35
