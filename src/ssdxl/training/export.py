"""What a run hands over: a standard diffusers folder, and preview grids to look at while it trains.

The previews are drawn by the stock ``StableDiffusionXLPipeline`` from the very modules being
exported, so a good-looking preview also proves the folder works outside ssdxl.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image

from ssdxl.models.components import Components
from ssdxl.training.data import IndexedSource

PREVIEW_COLUMNS = 4
PREVIEW_ZOOM = 3  # 64 px images are hard to judge at 1:1
SHAPES_PREVIEW_PROMPTS = (
    "a large red circle in the centre on a black background",
    "a small blue square at the top on a white background",
    "a large yellow star on the left on a navy background",
    "a small green cross at the bottom on a gray background",
    "a purple triangle to the left of a cyan circle on a black background",
    "an orange square above a white star on a navy background",
    "a large blue triangle on the right on a gray background",  # held-out pair
    "a yellow circle below a red cross on a white background",  # held-out pair
)


def export_model(parts: Components, folder: Path, dtype: str = "float16") -> Path:
    """Write ``parts`` as a diffusers pipeline folder (weights cast to ``dtype``), replacing ``folder``
    only once the new one is complete."""
    frozen = copy.copy(parts)
    for name, module in parts.modules().items():
        setattr(frozen, name, copy.deepcopy(module))  # saving casts in place; keep the originals exact
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_libraries():
        frozen.save(tmp, dtype=getattr(torch, dtype))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Saving chatters (shard bars, "keep in float32" notes on every cast): silence it during a run."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    levels = dlog.get_verbosity(), tlog.get_verbosity()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        dlog.set_verbosity(levels[0])
        tlog.set_verbosity(levels[1])
        tlog.enable_progress_bar()


def preview_prompts(data: str, source: IndexedSource, count: int = len(SHAPES_PREVIEW_PROMPTS)) -> list[str]:
    """Fixed prompts for the shapes world (two of them held-out combinations); the first captions otherwise."""
    if data == "shapes":
        return list(SHAPES_PREVIEW_PROMPTS[:count])
    return [source.sample(i).caption for i in range(min(count, len(source)))]  # type: ignore[arg-type]


@torch.no_grad()
def preview_grid(parts: Components, prompts: list[str], path: Path, seed: int = 0, **settings: object) -> Path:
    """Sample one image per prompt with the model's default settings (``settings`` overrides any of
    width, height, steps, guidance_scale, scheduler) and save them as a grid PNG.

    Runs in a forked RNG so that previews never change the training run's random stream.
    """
    from ssdxl.sampling.schedulers import resolve_scheduler

    defaults = {**parts.defaults, **settings}
    pipe = parts.diffusers_pipeline()
    if "scheduler" in settings:
        pipe.scheduler = resolve_scheduler(str(settings["scheduler"])).build(parts.scheduler_config)
    with torch.random.fork_rng(devices=[]):
        images = pipe(
            prompt=prompts,
            width=defaults.get("width", 64),
            height=defaults.get("height", 64),
            num_inference_steps=defaults.get("steps", 20),
            guidance_scale=defaults.get("guidance_scale", 4.5),
            generator=torch.Generator().manual_seed(seed),
        ).images
    w, h = images[0].size
    rows = -(-len(images) // PREVIEW_COLUMNS)
    grid = Image.new("RGB", (PREVIEW_COLUMNS * w * PREVIEW_ZOOM, rows * h * PREVIEW_ZOOM), "white")
    for i, image in enumerate(images):
        big = image.resize((w * PREVIEW_ZOOM, h * PREVIEW_ZOOM), Image.Resampling.NEAREST)
        grid.paste(big, ((i % PREVIEW_COLUMNS) * w * PREVIEW_ZOOM, (i // PREVIEW_COLUMNS) * h * PREVIEW_ZOOM))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
