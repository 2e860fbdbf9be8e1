"""The models a server may use, by name: only names given at start-up (and the built-in models).

Clients pick models by these names; a name never becomes a path, so a request cannot make the
server read an arbitrary file. Engines load on first use, one per source (and refiner): several names
for one model share its engine. They stay loaded, or with a budget (``max_loaded``, ``--max-loaded-models``) the
least recently used engine is unloaded before another one loads; an engine a batch runs on (``using``) never is.
A name may carry LoRAs of its own (``--model-lora NAME=PATH[:WEIGHT]``, e.g. Segmind's Vega RT: the Vega model plus
its LCM LoRA), which every job for that name gets. ``adapters`` is the server's view of the LoRA and embedding
folders, ``controls`` of the ControlNet folders, ``upscalers()`` of the upscaler folders and ``ip_adapters()`` of the
IP-Adapter folders: names only, never paths. ``styles`` are the prompt styles requests may name (built-in and
``--styles-file``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ssdxl.adapters.library import AdapterLibrary
from ssdxl.adapters.lora import inspect_lora
from ssdxl.conditioning.styles import load_styles
from ssdxl.control.ip_adapter import ip_adapter_names
from ssdxl.control.models import ControlLibrary
from ssdxl.errors import UserError
from ssdxl.models import builtin
from ssdxl.models.peek import peek_family
from ssdxl.models.vae import space_text
from ssdxl.sampling.limits import LIMITS, RequestLimits
from ssdxl.sampling.precision import release_memory
from ssdxl.server.errors import FieldError
from ssdxl.upscale import BUILTIN_FILTERS, Upscaler
from ssdxl.upscale.registry import model_files

if TYPE_CHECKING:
    from ssdxl.sampling.engine import Engine
    from ssdxl.server.config import ServerConfig

log = logging.getLogger("ssdxl.server")
EngineKey = tuple[str, str | None, str | None, str | None]  # source, refiner, VAE, tiny VAE: what one engine is
SAFE = ".safetensors"  # the only IP-Adapter files a server reads
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
        controlnet_dirs: Iterable[Path] = (),
        upscaler_dirs: Iterable[Path] = (),
        ip_adapter_dirs: Iterable[Path] = (),
        styles_files: Iterable[Path] = (),
        vaes: dict[str, str] | None = None,
        tiny_vaes: dict[str, str] | None = None,
        max_loaded: int | None = None,
        limits: RequestLimits = LIMITS,
    ):
        if max_loaded is not None and max_loaded < 1:
            raise UserError(f"--max-loaded-models must be at least 1, got {max_loaded}")
        self.max_loaded = max_loaded  # None: every engine stays loaded
        self.limits = limits  # what requests may ask for (``ssdxl serve --max-side``...): checked when they arrive
        self.sources = {**{name: name for name in builtin.names()}, **models}
        if not self.sources:
            raise UserError("no models to serve: pass --model NAME=PATH (e.g. --model ssd-1b=./ssd-1b)")
        self.refiners = dict(refiners or {})
        self.vaes = {name: str(Path(path).expanduser()) for name, path in (vaes or {}).items()}
        self.tiny_vaes = {name: str(Path(path).expanduser()) for name, path in (tiny_vaes or {}).items()}
        named_options = (("--refiner", self.refiners), ("--model-vae", self.vaes), ("--model-tiny-vae", self.tiny_vaes))
        for option, named in named_options:
            unknown = set(named) - set(self.sources)
            if unknown:
                raise UserError(f"{option} names unknown model(s): {', '.join(sorted(unknown))}")
        for option, named in named_options[1:]:
            for name, path in named.items():
                if not Path(path).exists():
                    raise UserError(f"{option} {name}={path}: no such file or folder")
        for name, path in self.tiny_vaes.items():  # a file the engine would refuse must not fail every job later
            if Path(path).is_file() and Path(path).suffix.lower() != ".safetensors":
                raise UserError(
                    f"--model-tiny-vae {name}={path}: the server loads .safetensors files or diffusers folders only "
                    "(pickled weights are refused)"
                )
            if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
                raise UserError(f"--model-tiny-vae {name}={path}: not an AutoencoderTiny folder (no config.json)")
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
        self.controlnet_dirs = tuple(Path(d) for d in controlnet_dirs)
        self.controls = ControlLibrary(self.controlnet_dirs, allow_paths=False)  # a missing folder stops start-up
        self.upscaler_dirs = tuple(Path(d) for d in upscaler_dirs)
        for folder in self.upscaler_dirs:
            if not folder.is_dir():
                raise UserError(f"--upscaler-dir {folder} does not exist")
        self.ip_adapter_dirs = tuple(Path(d) for d in ip_adapter_dirs)
        self.ip_adapters()  # a missing folder stops start-up
        self.styles = load_styles(styles_files)  # a bad file stops start-up
        self._engines: OrderedDict[EngineKey, Engine] = OrderedDict()  # least recently used first
        self._in_use: Counter[EngineKey] = Counter()  # batches running on each engine
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
            controlnet_dirs=config.controlnet_dirs,
            upscaler_dirs=config.upscaler_dirs,
            ip_adapter_dirs=config.ip_adapter_dirs,
            styles_files=config.styles_files,
            vaes=config.model_vaes,
            tiny_vaes=config.model_tiny_vaes,
            max_loaded=config.max_loaded_models,
            limits=config.limits,
        )

    def names(self) -> list[str]:
        return list(self.sources)

    def has_tiny_vae(self, name: str) -> bool:
        """Whether model ``name`` can decode ``fast_decode`` requests: a ``--model-tiny-vae``, or the shipped one for
        its latents (a built-in model, or a folder fine-tuned from one: read from its VAE's config, without loading
        it), as ``Engine.load`` would pick it."""
        if name in self.tiny_vaes:
            return True
        source = self.sources.get(name, "")
        local = Path(source).expanduser() if source else None
        folder = builtin.resolve(source) or (local if local is not None and local.is_dir() else None)
        config = folder / "vae" / "config.json" if folder is not None else None
        if config is None or not config.is_file():
            return False
        vae = json.loads(config.read_text())
        downscale = 2 ** (len(vae["block_out_channels"]) - 1)
        return builtin.tiny_vae(space_text(downscale, vae["latent_channels"], vae["scaling_factor"])) is not None

    def families(self) -> dict[str, str | None]:
        """Each model's family name (``ssdxl.models.families``), read from its configs or header, not loaded."""
        return {name: getattr(peek_family(source), "name", None) for name, source in self.sources.items()}

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

    def upscalers(self) -> dict[str, Upscaler]:
        """The upscalers requests may name: the built-in filters, then the model files of the upscaler folders by
        name (pickled files are never listed, so never read)."""
        files = model_files(self.upscaler_dirs)
        return {**{name: Upscaler(name) for name in BUILTIN_FILTERS}, **{n: Upscaler(n, p) for n, p in files.items()}}

    def upscaler(self, name: str, field: str) -> Upscaler:
        """The upscaler a request names (case-insensitive, as file names are); a FieldError naming ``field`` listing
        the names otherwise. A name never becomes a path."""
        known = self.upscalers()
        found = {key.lower(): upscaler for key, upscaler in known.items()}.get(name.strip().lower())
        if found is None:
            raise FieldError(field, f"unknown upscaler {name!r}; this server has: {', '.join(known)}")
        return found

    def ip_adapters(self) -> dict[str, Path]:
        """The IP-Adapter files requests may name, by stem, read from the folders on every call (files added later
        count at once); pickled files are left out, so never read."""
        return {name: path for name, path in ip_adapter_names(self.ip_adapter_dirs).items() if path.suffix == SAFE}

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
        with self._lock:
            return self._loaded(self._key(name))

    @contextmanager
    def using(self, name: str) -> Iterator[Engine]:
        """The engine for ``name``, kept loaded while the block runs: a budget never unloads it mid-batch."""
        key = self._key(name)
        with self._lock:
            engine = self._loaded(key)
            self._in_use[key] += 1
        try:
            yield engine
        finally:
            with self._lock:
                self._in_use[key] -= 1

    def _key(self, name: str) -> EngineKey:
        return self.sources[name], self.refiners.get(name), self.vaes.get(name), self.tiny_vaes.get(name)

    def _loaded(self, key: EngineKey) -> Engine:
        """The engine for ``key``, now the most recently used; loading it first makes room within the budget.
        Called with the lock held."""
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        self._make_room()
        from ssdxl.sampling.engine import Engine

        self._engines[key] = Engine.load(
            key[0],
            refiner=key[1],
            device=self.device,
            dtype=self.dtype,
            lora_dirs=self.lora_dirs,
            embedding_dirs=self.embedding_dirs,
            controlnet_dirs=self.controlnet_dirs,
            upscaler_dirs=self.upscaler_dirs,
            ip_adapter_dirs=self.ip_adapter_dirs,
            allow_paths=False,  # control models, IP-Adapters and upscalers by name only, as clients name them
            vae=key[2],
            tiny_vae=key[3],  # previews and fast decode; built-in models bring their own
        )
        return self._engines[key]

    def _make_room(self) -> None:
        """Unload the least recently used engines no batch runs on until one more fits the budget, and free their
        memory before the next one loads (its weights and theirs would not fit together)."""
        if self.max_loaded is None:
            return
        idle = [key for key in self._engines if not self._in_use[key]]
        unload = idle[: max(0, len(self._engines) + 1 - self.max_loaded)]
        for key in unload:
            del self._engines[key]
            log.info("unloaded %s to stay within --max-loaded-models %d", key[0], self.max_loaded)
        if unload:
            release_memory()
        if len(self._engines) >= self.max_loaded:
            log.warning("%d models are in use: loading one more than --max-loaded-models", len(self._engines))


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
