"""The models a server may use, by name: only names given at start-up (and the built-in models).

Clients pick models by these names; a name never becomes a path, so a request cannot make the
server read an arbitrary file. Engines load on first use and stay loaded.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.server.errors import FieldError

if TYPE_CHECKING:
    from ssdxl.sampling.engine import Engine

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
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

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

    def engine(self, name: str) -> Engine:
        """The loaded engine for a registered name (loaded once; concurrent callers wait)."""
        from ssdxl.sampling.engine import Engine

        with self._lock:
            if name not in self._engines:
                self._engines[name] = Engine.load(
                    self.sources[name], refiner=self.refiners.get(name), device=self.device, dtype=self.dtype
                )
            return self._engines[name]
