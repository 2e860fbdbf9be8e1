"""``ssdxl eval``: measure a model. ``adherence`` judges held-out shapes-world prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Measure a model: prompt adherence and FID on held-out shapes-world scenes.", no_args_is_help=True
)


@app.command()
def adherence(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Any model ssdxl loads (default: built-in).")
    ] = None,
    singles: Annotated[int, typer.Option("--singles", help="Single-object prompts in the suite.")] = 50,
    pairs: Annotated[int, typer.Option("--pairs", help="Two-object prompts in the suite.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Suite and generation seed.")] = 0,
    steps: Annotated[int | None, typer.Option("--steps", help="Default: the model's.")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", "--cfg")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", "-s")] = None,
    output: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype")] = "auto",
) -> None:
    """Generate the fixed held-out suite and judge every attribute by measuring the images."""
    from ssdxl.evaluation.adherence import adherence_suite, evaluate, suite_scale
    from ssdxl.sampling.engine import Engine
    from ssdxl.sampling.request import GenerationRequest

    engine = Engine.load(model, device=device, dtype=dtype)

    def generate(prompt: str, width: int, height: int, image_seed: int):
        request = GenerationRequest(
            prompt,
            width=width,
            height=height,
            seed=image_seed,
            steps=steps,
            guidance_scale=guidance,
            scheduler=scheduler,
        )
        return engine.generate(request).images[0].image

    scale = suite_scale(engine.base.components.defaults)
    report = evaluate(generate, adherence_suite(singles, pairs, seed), seed=seed, scale=scale)
    typer.echo(f"model: {engine.model_name}")
    typer.echo(report.table())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report.to_json())
