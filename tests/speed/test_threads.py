"""Thread counts by the work of a request: small UNets run on one thread and large ones on every core torch started
with, whatever ran before; a count the user set is kept."""

import pytest
import torch
from accelerate import init_empty_weights

from ssdxl.speed import threads
from ssdxl.speed.runtime import Runtime


@pytest.fixture
def unpinned(monkeypatch):
    for name in threads.PINNED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_pinned", False)
    monkeypatch.setattr(threads, "DEFAULT", 2)  # as on a 2-core machine, whatever this test process was given
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _unet(scale: str):
    from diffusers import UNet2DConditionModel

    from ssdxl.models.presets import get_preset

    with init_empty_weights():  # parameter counts only: no memory
        return UNet2DConditionModel.from_config(get_preset("vega", scale).unet)


def test_small_work_gets_one_thread_large_work_every_core():
    full, tiny = _unet("full"), _unet("tiny")
    assert threads.threads_for(tiny, 8 * 8, available=2) == 1
    assert threads.threads_for(full, 64 * 64, available=2) == 2  # Vega at 512²
    assert threads.threads_for(full, 64 * 64, available=16) == 16


def test_the_count_follows_the_request_not_what_ran_before(tiny_dir, unpinned, monkeypatch):
    from ssdxl.models.loading import load_components

    small, large = load_components(tiny_dir("vega")), _unet("full")
    runtime = Runtime.prepare([(small, "")], torch.device("cpu"), backend="torch")
    runtime.unet(small.unet, torch.zeros(1, 4, 8, 8))
    assert torch.get_num_threads() == 1
    runtime.use_threads(large, 128 * 128)  # a large model after a small one: every core again
    assert torch.get_num_threads() == 2

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's count is kept
    runtime.unet(small.unet, torch.zeros(1, 4, 8, 8))
    assert torch.get_num_threads() == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads.pin(2)
    runtime.unet(small.unet, torch.zeros(1, 4, 8, 8))
    assert threads.pinned() and torch.get_num_threads() == 2


def test_an_engine_request_runs_on_its_count(engine, unpinned):
    from ssdxl.sampling.request import GenerationRequest

    torch.set_num_threads(2)
    engine.generate(GenerationRequest("a red circle", seed=1, steps=1, width=64, height=64))
    assert torch.get_num_threads() == 1  # the tiny Vega's work is small at any test size
