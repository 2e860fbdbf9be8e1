"""The models a server may use, by name: only names given at start-up (and the built-in models).

Clients pick models by these names; a name never becomes a path, so a request cannot make the
server read an arbitrary file. Engines load on first use and stay loaded, one per source (and
refiner): several names for one model share its engine. A name may carry LoRAs of its own
(``--model-lora NAME=PATH[:WEIGHT]``, e.g. Segmind's Vega RT: the Vega model plus its LCM LoRA),
which every job for that name gets. ``adapters`` is the server's view of the LoRA and embedding
folders: names only, never paths.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ssdxl.adapters.library import AdapterLibrary
from ssdxl.adapters.lora import inspect_lora
from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.server.errors import FieldError

if TYPE_CHECKING:
    from ssdxl.sampling.engine import Engine
    from ssdxl.server.config import ServerConfig

# OpenAI clients name OpenAI's models; they get the server's default model.
OPENAI_MODEL_NAMES = {"dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"}


class ModelRegistry:
    def __init__(
        self,
        models: dict[str, str],
        refiners: dict[str, str] | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        lora_dirs: Iterable[Path] = (),
        embedding_dirs: Iterable[Path] = (),
        model_loras: dict[str, list[tuple[str, float]]] | None = None,
    ):
        self.sources = {**{name: name for name in builtin.names()}, **models}
        if not self.sources:
            raise UserError("no models to serve: pass --model NAME=PATH (e.g. --model ssd-1b=./ssd-1b)")
        self.refiners = dict(refiners or {})
        unknown = set(self.refiners) - set(self.sources)
        if unknown:
            raise UserError(f"--refiner names unknown model(s): {', '.join(sorted(unknown))}")
        if models:
            self.default = next(iter(models))
        else:
            self.default = builtin.DEFAULT_MODEL if builtin.DEFAULT_MODEL in self.sources else next(iter(self.sources))
        self.device = device
        self.dtype = dtype
        self.lora_dirs = tuple(Path(d) for d in lora_dirs)
        self.embedding_dirs = tuple(Path(d) for d in embedding_dirs)
        self.adapters = AdapterLibrary(self.lora_dirs, self.embedding_dirs, allow_paths=False)
        self.model_loras = _check_model_loras(model_loras or {}, self.sources)
        self._engines: dict[tuple[str, str | None], Engine] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ServerConfig) -> ModelRegistry:
        return cls(
            config.models,
            config.refiners,
            device=config.device,
            dtype=config.dtype,
            lora_dirs=config.lora_dirs,
            embedding_dirs=config.embedding_dirs,
            model_loras=config.model_loras,
        )

    def names(self) -> list[str]:
        return list(self.sources)

    def check(self, name: str | None, *, refiner: bool = False, field: str = "model") -> str:
        """The registered name for ``name`` (None and OpenAI's model names mean the default);
        a FieldError naming ``field`` when there is none."""
        if name is None or name in OPENAI_MODEL_NAMES:
            name = self.default
        if name not in self.sources:
            raise FieldError(field, f"unknown model {name!r}; this server has: {', '.join(self.sources)}")
        if refiner and not self.has_refiner(name):
            raise FieldError("refiner", f"model {name!r} has no refiner here (start with --refiner {name}=PATH)")
        return name

    def has_refiner(self, name: str) -> bool:
        return name in self.refiners

    def bound_loras(self, name: str) -> list[tuple[str, float]]:
        """The LoRAs (absolute path, weight) every job for model ``name`` gets (``--model-lora``)."""
        return list(self.model_loras.get(name, ()))

    def refresh_adapters(self) -> None:
        """Re-read the LoRA and embedding folders: the server's index and those of the engines loaded here
        (runners elsewhere re-read theirs when a job names something they do not know)."""
        self.adapters.refresh()
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.adapters.refresh()

    def engine(self, name: str) -> Engine:
        """The loaded engine for a registered name (loaded once per source and refiner; concurrent callers wait)."""
        from ssdxl.sampling.engine import Engine

        key = (self.sources[name], self.refiners.get(name))
        with self._lock:
            if key not in self._engines:
                self._engines[key] = Engine.load(
                    key[0],
                    refiner=key[1],
                    device=self.device,
                    dtype=self.dtype,
                    lora_dirs=self.lora_dirs,
                    embedding_dirs=self.embedding_dirs,
                )
            return self._engines[key]


def _check_model_loras(
    model_loras: dict[str, list[tuple[str, float]]], sources: dict[str, str]
) -> dict[str, list[tuple[str, float]]]:
    """Each model LoRA as an absolute path, read once now so a bad file stops the server at start-up."""
    unknown = set(model_loras) - set(sources)
    if unknown:
        raise UserError(f"--model-lora names unknown model(s): {', '.join(sorted(unknown))} (add --model NAME=PATH)")
    checked = {}
    for name, loras in model_loras.items():
        checked[name] = []
        for path, weight in loras:
            info = inspect_lora(Path(path).expanduser())
            checked[name].append((str(info.path.resolve()), float(weight)))
    return checked
