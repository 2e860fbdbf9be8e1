"""``ssdxl loras`` and ``ssdxl embeddings``: what adapter files a folder holds, as a user picks them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ssdxl.errors import UserError


def loras(
    lora_dir: Annotated[list[Path], typer.Option("--lora-dir", help="Folder(s) of LoRA files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per LoRA.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also read pickled files.")] = False,
) -> None:
    """List LoRAs: name, format, rank, what they patch, the base model they were trained for, few-step kind."""
    from ssdxl.adapters.library import AdapterLibrary

    library = AdapterLibrary(lora_dir, allow_pickle=allow_pickle)
    rows = []
    for name in library.lora_names():
        try:
            rows.append(library.lora(name).as_dict())
        except UserError as exc:
            rows.append({"name": name, "error": str(exc)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'name':<28}{'format':<11}{'rank':>5}  {'patches':<34}{'base model':<22}few-step")
    for row in rows:
        if "error" in row:
            typer.echo(f"{row['name']:<28}unusable: {row['error']}")
            continue
        parts = ", ".join(p.replace("text_encoder", "te") for p in row["parts"])
        rank = row["rank"] if row["rank"] is not None else "-"
        typer.echo(
            f"{row['name']:<28}{row['format']:<11}{rank:>5}  {parts:<34}{row['base_model'] or '-':<22}"
            f"{row['few_step'] or '-'}"
        )


def embeddings(
    embedding_dir: Annotated[list[Path], typer.Option("--embedding-dir", help="Folder(s) of embedding files.")],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also read pickled files.")] = False,
) -> None:
    """List textual-inversion embeddings: the name a prompt calls, vectors, and which text encoders they fit."""
    from ssdxl.adapters.library import AdapterLibrary

    library = AdapterLibrary((), embedding_dir, allow_pickle=allow_pickle)
    for name in library.embedding_names():
        try:
            e = library.embedding(name)
        except UserError as exc:
            typer.echo(f"{name:<28}unusable: {exc}")
            continue
        towers = ", ".join(f"{k} {v.shape[-1]}" for k, v in e.vectors.items())
        typer.echo(f"{name:<28}{e.length:>3} vector(s)  {towers}  {e.hash}")
