"""Prompt styles: named templates that wrap a prompt and add a negative prompt, as AUTOMATIC1111 and Fooocus users
keep them.

A style's prompt holds ``{prompt}`` where the user's prompt goes; one without it is appended after ", ", and the
negative prompts merge the same way. These are A1111's rules (``modules/styles.py``), so a ``styles.csv`` made for
A1111 gives the same prompts here. ssdxl ships ``styles.json`` (written for this project); ``load_styles`` adds A1111
``styles.csv`` files and JSON files of the same shape, a later file's style replacing an earlier one of its name.
"""

from __future__ import annotations

import csv
import difflib
import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdxl.errors import UserError, first_line

PLACEHOLDER = "{prompt}"
BUILTIN_FILE = Path(__file__).with_name("styles.json")


@dataclass(frozen=True)
class Style:
    """One named template, as a row of A1111's ``styles.csv``."""

    name: str
    prompt: str  # a template: ``{prompt}`` is replaced by the user's prompt; without it, appended after ", "
    negative_prompt: str = ""  # merged with the user's negative prompt the same way


def load_styles(files: Iterable[str | Path] = ()) -> dict[str, Style]:
    """The built-in styles, then each file's in order (a later style replaces an earlier one of the same name)."""
    styles = dict(_builtin())
    for path in files:
        styles.update(read_styles(Path(path).expanduser()))
    return styles


@functools.cache
def _builtin() -> dict[str, Style]:
    return read_styles(BUILTIN_FILE)


def read_styles(path: Path) -> dict[str, Style]:
    """One file's styles: a ``.json`` list of ``{"name", "prompt", "negative_prompt"}`` objects, or an A1111
    ``styles.csv`` (columns ``name,prompt,negative_prompt``; other columns are ignored). UserError naming the file
    when it cannot be used."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            if path.suffix.lower() == ".json":
                return _from_json(json.load(file))
            reader = csv.DictReader(file, skipinitialspace=True)  # A1111's reader: `a, "b, c"` is two fields
            try:
                return _from_csv(reader)
            except csv.Error as exc:
                raise ValueError(f"line {reader.line_num}: {exc}") from None
    except FileNotFoundError:
        raise UserError(f"styles file {path} does not exist") from None
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON, or not the shape described above
        raise UserError(f"styles file {path} is not usable: {first_line(exc)}") from None


def _from_csv(reader: csv.DictReader) -> dict[str, Style]:
    columns = reader.fieldnames or []
    prompt_column = "prompt" if "prompt" in columns else "text"  # A1111's first files had name,text
    if "name" not in columns or prompt_column not in columns:
        raise ValueError(f"needs the columns name,prompt,negative_prompt; its header is {','.join(columns)!r}")
    styles = {}
    for row in reader:
        name = (row.get("name") or "").strip()
        if name and not name.startswith("#"):  # A1111 reads names starting with # as comments
            styles[name] = Style(name, row.get(prompt_column) or "", row.get("negative_prompt") or "")
    return styles


def _from_json(data: Any) -> dict[str, Style]:
    if not isinstance(data, list):
        raise ValueError('expected a list of {"name", "prompt", "negative_prompt"} objects')
    styles = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip():
            raise ValueError(f"item {i}: expected an object with a non-empty name")
        texts = {key: item.get(key, "") for key in ("prompt", "negative_prompt")}
        if not all(isinstance(text, str) for text in texts.values()):
            raise ValueError(f"item {i} ({item['name']}): prompt and negative_prompt must be strings")
        name = item["name"].strip()
        styles[name] = Style(name, **texts)
    return styles


def apply_styles(prompt: str, negative: str, names: Iterable[str], styles: Mapping[str, Style]) -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles applied in order, as A1111 applies them; an unknown name is a
    UserError suggesting the close ones."""
    for name in names:
        style = find_style(name, styles)
        prompt = merge_prompts(style.prompt, prompt)
        negative = merge_prompts(style.negative_prompt, negative)
    return prompt, negative


def merge_prompts(template: str, prompt: str) -> str:
    """``prompt`` put where ``template`` says ``{prompt}``; else the two joined by ", ", leaving out an empty one."""
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), template.strip()) if part)


def find_style(name: str, styles: Mapping[str, Style]) -> Style:
    """The style called ``name``, or a UserError naming the close ones (or all of them when none is close)."""
    if name in styles:
        return styles[name]
    by_lower = {known.lower(): known for known in styles}
    close = [by_lower[match] for match in difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)]
    hint = f"did you mean {' or '.join(close)}?" if close else f"the styles are: {', '.join(styles) or 'none'}"
    raise UserError(f"unknown style {name!r}; {hint}")
