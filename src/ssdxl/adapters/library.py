"""Where adapters come from: folders of LoRAs and embeddings, names in prompts, paths given by a user.

A1111 and ComfyUI users keep LoRAs in a folder and call them in the prompt as ``<lora:name:0.8>``
(``<lyco:...>`` too); embeddings in a folder are used by writing their name. ``AdapterLibrary``
indexes such folders (``refresh`` re-reads them) and resolves a name, or, where the caller allows
paths (the CLI and Python, not the server), a file path, to a file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ssdxl.adapters.embeddings import EMBEDDING_SUFFIXES, Embedding, name_pattern, read_embedding
from ssdxl.adapters.lora import LORA_SUFFIXES, LoraInfo, inspect_lora
from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.paths import files_by_stem
from ssdxl.sampling.request import PROMPT_LORA


def prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its ``<lora:name:weight>`` tags, and the (name, weight) pairs they named."""
    found: list[tuple[str, float]] = []

    def take(match: re.Match[str]) -> str:
        name, weight = match.group(1).strip(), (match.group(2) or "1").strip()
        try:
            found.append((name, float(weight)))
        except ValueError:
            raise UserError(f"LoRA weight {weight!r} in {match.group(0)!r} is not a number") from None
        return ""

    stripped, count = PROMPT_LORA.subn(take, prompt)
    while count:  # taking a tag out can join the text around it into a new one: "<lor<lora:a:1>a:b>"
        stripped, count = PROMPT_LORA.subn(take, stripped)
    return re.sub(r"\s{2,}", " ", stripped).strip(" ,") if found else prompt, found


def split_weight(text: str, default: float = 1.0) -> tuple[str, float]:
    """``name``, ``path`` or either with ``:WEIGHT``; a colon not followed by a number stays (``C:\\...``)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return text, default


class AdapterLibrary:
    """LoRA and embedding files by name, from folders; ``allow_paths`` also accepts file paths."""

    def __init__(
        self,
        lora_dirs: Iterable[Path] = (),
        embedding_dirs: Iterable[Path] = (),
        *,
        allow_paths: bool = True,
        allow_pickle: bool = False,
    ):
        self.lora_dirs = [Path(d).expanduser() for d in lora_dirs] + builtin.lora_dirs()  # the user's win a clash
        self.embedding_dirs = [Path(d).expanduser() for d in embedding_dirs]
        self.allow_paths = allow_paths
        self.allow_pickle = allow_pickle
        for folder in (*self.lora_dirs, *self.embedding_dirs):
            if not folder.is_dir():
                raise UserError(f"adapter folder {folder} does not exist")
        self._loras: dict[str, Path] = {}
        self._embeddings: dict[str, Path] = {}
        self._infos: dict[tuple[Path, float], LoraInfo] = {}
        self._read: dict[tuple[Path, float], Embedding] = {}
        self.refresh()

    def refresh(self) -> None:
        """Re-read the folders (new and removed files)."""
        self._loras = files_by_stem(self.lora_dirs, LORA_SUFFIXES)
        self._embeddings = files_by_stem(self.embedding_dirs, EMBEDDING_SUFFIXES)

    def lora_names(self) -> list[str]:
        return sorted(self._loras)

    def embedding_names(self) -> list[str]:
        return sorted(self._embeddings)

    def lora(self, ref: str) -> LoraInfo:
        """A LoRA by name (from the folders) or, where allowed, by path."""
        return self._info(self._find(ref, self._loras, "LoRA"))

    def embedding(self, ref: str) -> Embedding:
        path = self._find(ref, self._embeddings, "embedding")
        key = (path.resolve(), path.stat().st_mtime)
        if key not in self._read:
            self._read[key] = read_embedding(path, allow_pickle=self.allow_pickle)
        return self._read[key]

    def embeddings_named_in(self, *texts: str) -> list[str]:
        """Folder embeddings whose name appears in any of ``texts`` (how A1111 activates them)."""
        names = []
        for name in self.embedding_names():
            if any(name_pattern(name).search(text) for text in texts):
                names.append(name)
        return names

    def _info(self, path: Path) -> LoraInfo:
        key = (path.resolve(), path.stat().st_mtime)
        if key not in self._infos:
            self._infos[key] = inspect_lora(path, allow_pickle=self.allow_pickle)
        return self._infos[key]

    def _find(self, ref: str, index: dict[str, Path], kind: str) -> Path:
        if ref in index:
            return index[ref]
        stem = Path(ref).stem if Path(ref).suffix.lower() in LORA_SUFFIXES else ref
        if stem in index and "/" not in ref and "\\" not in ref:
            return index[stem]
        if self.allow_paths and Path(ref).expanduser().is_file():
            return Path(ref).expanduser().resolve()
        if self.allow_paths and ("/" in ref or "\\" in ref or Path(ref).suffix):
            raise UserError(f"{kind} file {ref} not found")
        known = ", ".join(sorted(index)) or "none"
        where = " or a file path" if self.allow_paths else ""
        raise UserError(f"unknown {kind} {ref!r}: give one of these names{where}: {known}")


