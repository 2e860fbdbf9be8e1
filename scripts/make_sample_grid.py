"""Render a grid of samples with their prompts (the picture in the README).

    python scripts/make_sample_grid.py --model shapes --out docs/images/builtin-grid.png

Prompts are held-out shapes-world scenes (compositions the model never saw in training), each
generated with its own fixed seed, so the grid is reproducible.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ssdxl.evaluation.adherence import adherence_suite, suite_scale
from ssdxl.sampling.engine import Engine
from ssdxl.sampling.request import GenerationRequest

CELL = 192  # pixels per sample in the grid (samples are upscaled, nearest neighbour)
CAPTION_LINES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="any model ssdxl loads (default: the built-in)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/builtin-grid.png"))
    parser.add_argument("--singles", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    engine = Engine.load(args.model)
    scenes = adherence_suite(args.singles, args.pairs, args.seed)
    scale = suite_scale(engine.base.components.defaults)  # shapes-xl draws twice the size
    cells = []
    for i, scene in enumerate(scenes):
        size = {"width": scene.width * scale, "height": scene.height * scale}
        request = GenerationRequest(scene.caption, seed=args.seed + i, **size)
        cells.append((engine.generate(request).images[0].image, scene.caption))
    grid = _grid(cells, args.columns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(cells)} samples from {engine.model_name})")


def _grid(cells: list[tuple[Image.Image, str]], columns: int) -> Image.Image:
    font = ImageFont.load_default()
    line_height = 12
    cell_h = CELL + CAPTION_LINES * line_height + 6
    rows = (len(cells) + columns - 1) // columns
    grid = Image.new("RGB", (columns * CELL, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(cells):
        x, y = (i % columns) * CELL, (i // columns) * cell_h
        scale = CELL / max(image.size)
        shown = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
        grid.paste(shown, (x + (CELL - shown.width) // 2, y + (CELL - shown.height) // 2))
        for j, line in enumerate(textwrap.wrap(caption, 30)[:CAPTION_LINES]):
            draw.text((x + 4, y + CELL + 2 + j * line_height), line, fill="black", font=font)
    return grid


if __name__ == "__main__":
    main()
