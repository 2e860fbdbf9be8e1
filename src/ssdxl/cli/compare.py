"""``ssdxl compare``: models side by side on one prompt and seed(s), with settings varied, as a labelled
grid plus timings, memory and quality per model. The work is in ``ssdxl.compare``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from typer.core import TyperCommand

from ssdxl.errors import UserError

if TYPE_CHECKING:
    from ssdxl.compare.plan import ModelSpec

ORDER = "ssdxl.option_order"


class OrderedOptions(TyperCommand):
    """Keeps the order the options came in (``ctx.meta[ORDER]``): a --refiner belongs to the --model
    given just before it, which click's per-option lists forget."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _, _, order = self.make_parser(ctx).parse_args(args=list(args))
        ctx.meta[ORDER] = [param.name for param in order]
        return super().parse_args(ctx, args)


def attach_refiners(models: list[str], refiners: list[str], order: list[str]) -> list[ModelSpec]:
    """The models as ``ModelSpec`` s, each --refiner given to the --model before it."""
    from ssdxl.compare import parse_model

    specs, pending = [parse_model(text) for text in models], iter(refiners)
    seen = -1
    for name in order:
        if name == "model":
            seen += 1
        elif name == "refiner":
            if seen < 0:
                raise UserError("--refiner must follow the --model it refines")
            if specs[seen].refiner is not None:
                raise UserError(f"model {specs[seen].label!r} has two --refiner options")
            specs[seen] = replace(specs[seen], refiner=next(pending))
    return specs


def compare(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(help="What to draw (or --prompts-file).")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="[LABEL=]SOURCE: built-in name, folder, .safetensors (repeatable)."),
    ] = None,
    refiner: Annotated[
        list[str] | None, typer.Option("--refiner", help="Refiner for the --model given just before it.")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The grid image; .md, .json and a cells folder go beside it.")
    ] = Path("compare.png"),
    cells_dir: Annotated[
        Path | None, typer.Option("--cells-dir", help="Where each cell's PNG goes (default: the grid's name).")
    ] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts-file", help="Prompts, one a line, instead of PROMPT.")
    ] = None,
    negative: Annotated[str, typer.Option("--negative-prompt", "--negative", "-n", help="Negative prompt.")] = "",
    seed: Annotated[list[int] | None, typer.Option("--seed", help="A seed (repeatable; default: one random).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Seeds as a list: 1,2,3.")] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", "--cfg", help="Guidance scale.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", "-s")] = None,
    width: Annotated[int | None, typer.Option("--width", "-W")] = None,
    height: Annotated[int | None, typer.Option("--height", "-H")] = None,
    vary: Annotated[
        list[str] | None,
        typer.Option("--vary", help="FIELD=v1,v2,...: a request field across the grid (up to two)."),
    ] = None,
    zoom: Annotated[int, typer.Option("--zoom", help="Enlarge cells in the grid by this factor.", min=1)] = 1,
    adherence: Annotated[
        bool, typer.Option("--adherence", help="Judge held-out shapes-world prompts (built-in world models).")
    ] = False,
    adherence_prompts: Annotated[
        int, typer.Option("--adherence-prompts", help="How many adherence prompts per row.", min=1)
    ] = 10,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Comma list of fid, is, clip, lpips.")] = None,
    metrics_weights: Annotated[
        Path | None, typer.Option("--metrics-weights", help="Folder with the metric networks' weights.")
    ] = None,
    reference_model: Annotated[
        str | None, typer.Option("--reference-model", help="Label whose images FID/LPIPS compare against.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto, float32, bfloat16 or float16.")] = "auto",
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow pickled checkpoints.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the paths written.")] = False,
) -> None:
    """Compare models on the same prompt and seeds: rows are models, columns seeds (or the --vary values)."""
    from ssdxl.cli.main import check_output
    from ssdxl.compare import parse_vary, plan_comparison, run_comparison, write_comparison
    from ssdxl.compare.quality import load_metrics, score_metrics
    from ssdxl.sampling.request import GenerationRequest

    check_output(output)
    specs = attach_refiners(list(model or []), list(refiner or []), ctx.meta[ORDER])
    prompts = _prompts(prompt, prompts_file)
    varies = [parse_vary(text) for text in vary or []]
    template = GenerationRequest(
        prompts[0], negative, width=width, height=height, steps=steps, guidance_scale=guidance, scheduler=scheduler
    )
    plan = plan_comparison(specs, template, prompts=prompts, seeds=_seeds(seed, seeds), varies=varies)
    names = [n.strip() for n in metrics.split(",") if n.strip()] if metrics else []
    suite = None
    if names:
        suite = load_metrics(plan, metrics_weights, names, reference_model, allow_pickle=allow_pickle, device=device)
    log = None if quiet else (lambda message: typer.echo(message, err=True))
    comparison = run_comparison(
        plan,
        device=device,
        dtype=dtype,
        allow_pickle=allow_pickle,
        adherence_prompts=adherence_prompts if adherence else 0,
        log=log,
    )
    if suite is not None:
        score_metrics(comparison, suite, reference_model)
    write_comparison(comparison, output, cells_dir, zoom)
    report = output.with_suffix(".md")
    typer.echo(f"{output}  ({len(plan.row_labels)} x {len(plan.column_labels)} grid)")
    typer.echo(f"{cells_dir or output.with_suffix('')}/  {report}  {output.with_suffix('.json')}")
    if not quiet:  # the table
        typer.echo("\n" + "\n".join(line for line in report.read_text().splitlines() if line.startswith("|")))


compare.command_class = OrderedOptions  # type: ignore[attr-defined]  # read by cli.main.register_subcommands


def _prompts(prompt: str | None, prompts_file: Path | None) -> list[str]:
    if (prompt is None) == (prompts_file is None):
        raise UserError("give a PROMPT or --prompts-file FILE (one of them)")
    if prompts_file is None:
        return [prompt]  # type: ignore[list-item]
    try:
        lines = [line.strip() for line in prompts_file.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts-file: cannot read {prompts_file} ({exc})") from None
    if not any(lines):
        raise UserError(f"--prompts-file: {prompts_file} has no prompts")
    return [line for line in lines if line]


def _seeds(seed: list[int] | None, seeds: str | None) -> list[int]:
    """--seed values then --seeds ones; none means one random seed for every cell."""
    try:
        listed = [int(v) for v in seeds.split(",") if v.strip()] if seeds else []
    except ValueError:
        raise UserError(f"--seeds must look like 1,2,3; got {seeds!r}") from None
    return [*(seed or []), *listed]
