"""The engine: components loaded once, every request kind served by one path.

``Engine.load`` picks device and precision; ``Engine.generate`` resolves a request against the
model's defaults, encodes the prompts once, then for each sample draws its own seeded noise on
the CPU (so a seed means the same picture on every device), denoises (handing latents to the
refiner when asked), decodes and checks the pixels are finite.

``Engine.generate_batch`` runs several compatible requests (equal ``Engine.batch_key``) through
the UNet as one batch, for a server with concurrent clients. Every image keeps its own CPU
generator for the initial and the per-step noise, so it is the image its request gives alone:
bit for bit where the backend's batched kernels match single ones (bfloat16 on CPUs without AMX),
within float rounding otherwise (float32 on CPU differs by ~1e-6 in the latents, bfloat16 on AMX by
its kernels' blocking; at most a level or two of the 8-bit pixels).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from diffusers import T2IAdapter
from PIL import Image

from ssdxl import __version__
from ssdxl.adapters.library import AdapterLibrary, prompt_loras
from ssdxl.adapters.patching import MAX_LORAS, AdapterPatcher, embedding_tokens, rewrite_names
from ssdxl.conditioning.prompt import Conditioning, chunk_count, empty_like, encode_text, micro_conditioning
from ssdxl.conditioning.styles import Style, apply_styles, load_styles
from ssdxl.conditioning.weighting import parse_prompt
from ssdxl.control import outpaint
from ssdxl.control.ip_adapter import ImageEncoders, IPAdapterPatcher, ip_adapter_names, load_ip_adapter
from ssdxl.control.models import ControlLibrary, ControlModel, union_type_index
from ssdxl.control.preprocess import check_preprocessor, preprocess
from ssdxl.control.residuals import RESIZE_MODES, ActiveControl, ControlStack, control_tensor
from ssdxl.errors import FieldError, UserError
from ssdxl.models import builtin
from ssdxl.models.components import Components
from ssdxl.models.loading import file_hash, load_components, weights_file
from ssdxl.models.tiny_vae import TinyVAE, load_tiny_vae, missing_message
from ssdxl.models.vae import latent_space, load_vae, to_unet, to_vae, vae_weights
from ssdxl.output.infotext import build_infotext
from ssdxl.sampling.denoiser import GuidedDenoiser, Inpainting, ModelCall
from ssdxl.sampling.limits import (
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    OVERSIZE_AREA,
    SIZE_MULTIPLE,
    check_hires_size,
    check_request,
    check_side,
    hires_size,
)
from ssdxl.sampling.loop import StepCallback, denoise, schedule_slice
from ssdxl.sampling.precision import dtype_name, pick_device, pick_dtype
from ssdxl.sampling.request import ControlUnit, GeneratedImage, GenerationRequest, GenerationResult, ImagePrompt
from ssdxl.sampling.schedulers import resolve_scheduler
from ssdxl.speed import tuning
from ssdxl.speed.runtime import Runtime, adapters_key
from ssdxl.upscale import is_latent_mode, resolve_upscaler, upscale_image, upscale_latents

FEW_STEP_SCHEDULERS = {"LCMScheduler": "LCM", "TCDScheduler": "TCD"}  # a distilled UNet shipped with its sampler
FEW_STEP_DEFAULTS = {"steps": 4, "guidance_scale": 1.0}  # LCM/TCD LoRAs: no CFG, a handful of steps
MAX_CONTROLS = 4  # control units a request may use (A1111 shows 3 by default)
MAX_CONTROL_SCALE = 2.0  # sd-webui-controlnet's weight slider
MAX_HIRES_SCALE = 4.0
MAX_IMAGE_PROMPTS = 4  # IP-Adapters a request may use, and pictures per adapter


class GenerationError(UserError):
    """The model produced unusable output (e.g. NaN) for this request."""


@dataclasses.dataclass
class LoadedModel:
    components: Components
    source: str  # what the user passed: built-in name, path or repo id
    hash: str  # A1111-style short hash of the weights
    vae: str | None = None  # a swapped-in VAE (--vae): its name and hash, as A1111 records them
    vae_hash: str = ""


class Engine:
    """Holds a base model (and optionally a refiner) on one device, ready for any request."""

    def __init__(
        self,
        base: LoadedModel,
        refiner: LoadedModel | None,
        device: torch.device,
        dtype: torch.dtype,
        runtime: Runtime | None = None,
        adapters: AdapterLibrary | None = None,
        fuse_loras: bool = False,
        controls: ControlLibrary | None = None,
        upscaler_dirs: tuple[Path, ...] = (),
        allow_pickle: bool = False,
        ip_adapter_dirs: tuple[Path, ...] = (),
        styles: dict[str, Style] | None = None,
        tiny_vae: TinyVAE | None = None,
    ):
        if refiner is not None:
            _check_pair(base, refiner)
        self.base = base
        self.refiner = refiner
        self.device = device
        self.dtype = dtype
        self.runtime = runtime or Runtime()  # how the UNets and decoders run (ssdxl.speed)
        self.adapters = adapters or AdapterLibrary()  # where LoRA and embedding names point
        self.patcher = AdapterPatcher(base.components)  # the base model's per-request adapters
        self.fuse_loras = fuse_loras  # merge LoRAs into the weights per request instead of extra matmuls
        self.controls = controls or ControlLibrary()  # where ControlNet / T2I-Adapter names point
        self.upscaler_dirs = tuple(Path(d).expanduser() for d in upscaler_dirs)  # hires fix's model upscalers
        self.allow_pickle = allow_pickle
        self.ip_adapter_dirs = tuple(Path(d).expanduser() for d in ip_adapter_dirs)  # IP-Adapters by name
        ip_adapter_names(self.ip_adapter_dirs)  # a missing folder fails at start-up
        self.ip_patcher = IPAdapterPatcher(base.components.unet)  # IP-Adapters, resident, enabled per request
        self._ip_infos: dict[tuple, object] = {}
        # requests may name control models, IP-Adapters and upscalers by path (CLI, Python), or by name only (server)
        self.allow_paths = self.controls.allow_paths
        self.image_encoders = ImageEncoders()
        self.styles = load_styles() if styles is None else styles  # prompt styles requests name (built-in + files)
        self.tiny_vae = tiny_vae  # fast decode (GenerationRequest.fast_decode) and server previews; None: none

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        *,
        refiner: str | Path | None = None,
        device: str = "auto",
        dtype: str = "auto",
        allow_pickle: bool = False,
        backend: str | None = None,
        optimize: bool = True,
        lora_dirs: tuple[str | Path, ...] = (),
        embedding_dirs: tuple[str | Path, ...] = (),
        fuse_loras: bool = False,
        controlnet_dirs: tuple[str | Path, ...] = (),
        upscaler_dirs: tuple[str | Path, ...] = (),
        ip_adapter_dirs: tuple[str | Path, ...] = (),
        allow_paths: bool = True,
        vae: str | Path | None = None,
        styles_files: tuple[str | Path, ...] = (),
        prediction: str | None = None,
        zero_snr: bool = False,
        tiny_vae: str | Path | None = None,
        progress: bool = False,
    ) -> Engine:
        """``backend``: torch, openvino, or auto (OpenVINO on a CPU for full-size bfloat16 models, exported on first
        use; ``speed.runtime``), None: ``$SSDXL_BACKEND`` or auto; ``optimize``
        applies the measured CPU settings of ``ssdxl.speed.tuning``; ``lora_dirs`` / ``embedding_dirs``
        ``controlnet_dirs``, ``upscaler_dirs`` and ``ip_adapter_dirs`` are folders whose files requests may name;
        ``allow_paths`` False takes control models, IP-Adapters and upscalers from those folders only; ``vae``
        replaces the models' VAE (``ssdxl.models.vae``); ``styles_files`` (A1111 ``styles.csv`` or JSON) add
        prompt styles to the built-in ones.
        ``prediction`` (v / eps) and ``zero_snr`` override the base model's scheduler config (``load_components``).
        ``tiny_vae`` (an ``AutoencoderTiny`` folder or TAESD file, ``ssdxl.models.tiny_vae``) decodes requests that
        ask for ``fast_decode`` and the server's previews; a built-in model gets the one shipped for it.
        ``progress``: a bar on stderr while a model is exported for OpenVINO (its first use, ``Runtime.prepare``)."""
        styles = load_styles(styles_files)  # a bad file fails before the model loads
        library = AdapterLibrary(lora_dirs, embedding_dirs, allow_pickle=allow_pickle)
        controls = ControlLibrary(controlnet_dirs, allow_pickle=allow_pickle, allow_paths=allow_paths)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        base = _load(model, torch_device, torch_dtype, allow_pickle, prediction=prediction, zero_snr=zero_snr)
        ref = _load(refiner, torch_device, torch_dtype, allow_pickle) if refiner is not None else None
        loaded = [(m.components, m.hash) for m in (base, ref) if m is not None]
        runtime = Runtime.prepare(loaded, torch_device, backend=backend, optimize=optimize, progress=progress)
        for m in (base, ref) if vae is not None else ():
            if m is not None:  # after the runtime: an OpenVINO export holds the model's own decoder, which goes
                runtime.forget_decoder(m.components.vae)
                _swap_vae(m, vae, torch_device, torch_dtype, allow_pickle)
                if optimize:
                    tuning.apply_vae(m.components.vae, torch_device)
        tiny = _load_tiny(base, tiny_vae, torch_device, torch_dtype, allow_pickle)
        if tiny is not None and optimize:
            tuning.apply_vae(tiny.model, torch_device)  # channels-last: 1.8x on CPU for the built-in one in float32
        upscalers, ip_adapters = tuple(map(Path, upscaler_dirs)), tuple(map(Path, ip_adapter_dirs))
        return cls(
            base,
            ref,
            torch_device,
            torch_dtype,
            runtime,
            library,
            fuse_loras,
            controls,
            upscalers,
            allow_pickle,
            ip_adapters,
            styles=styles,
            tiny_vae=tiny,
        )

    def enable_tiled_vae(self) -> None:
        """Decode large images tile by tile (diffusers' VAE tiling): memory stays bounded, and the
        pixels differ slightly near tile seams, so it is a choice, not a default."""
        for loaded in (self.base, self.refiner):
            if loaded is not None:
                loaded.components.vae.enable_tiling()
        if self.tiny_vae is not None:  # --fast-decode too: AutoencoderTiny tiles above 512 pixels a side
            self.tiny_vae.model.enable_tiling()

    @property
    def model_name(self) -> str:
        return self.base.components.name

    # ------------------------------------------------------------------ requests

    def resolve(self, request: GenerationRequest) -> GenerationRequest:
        """The request with defaults filled in and every field checked; seed -1 becomes a real seed."""
        d = self.base.components.defaults
        r = dataclasses.replace(request, loras=list(request.loras), embeddings=list(request.embeddings))
        if r.styles and not r.styles_applied:  # first: a style's text may call LoRAs and embeddings
            r.prompt, r.negative_prompt = apply_styles(r.prompt, r.negative_prompt, r.styles, self.styles)
            r.styles_applied = True
        check_request(r)  # the contract every entry point checks, on the request as given (its prompts styled)
        self._resolve_adapters(r)
        if len(r.controls) > MAX_CONTROLS:
            raise UserError(f"at most {MAX_CONTROLS} control units a request; got {len(r.controls)}")
        r.controls = [self._resolve_control(unit) for unit in r.controls]
        if len(r.image_prompts) > MAX_IMAGE_PROMPTS:
            raise UserError(f"at most {MAX_IMAGE_PROMPTS} IP-Adapters a request; got {len(r.image_prompts)}")
        r.image_prompts = [self._resolve_image_prompt(prompt) for prompt in r.image_prompts]
        if r.outpaint is not None:
            r.outpaint = outpaint.check_sides(r.outpaint, r.init_image, r.mask_image)
        if r.init_image is not None and r.width is None and r.height is None:
            size = outpaint.canvas_size(r.init_image.size, r.outpaint) if r.outpaint else r.init_image.size
            r.width, r.height = (max(SIZE_MULTIPLE, s - s % SIZE_MULTIPLE) for s in size)
            if not MIN_SIDE <= min(r.width, r.height) <= max(r.width, r.height) <= MAX_SIDE:
                raise FieldError(
                    "init_image",
                    f"is {size[0]}x{size[1]}, and without a width and height the output takes its size: give a "
                    f"width and height (sides from {MIN_SIDE} to {MAX_SIDE}) to resize it",
                )
        for name, fallback in (("width", 1024), ("height", 1024), ("steps", 30)):
            if getattr(r, name) is None:
                setattr(r, name, d.get(name, fallback))
        r.guidance_scale = d.get("guidance_scale", 7.0) if r.guidance_scale is None else r.guidance_scale
        r.scheduler = resolve_scheduler(r.scheduler or d.get("scheduler", "Euler")).name
        if r.strength is None and r.init_image is not None:
            r.strength = 1.0 if r.kind == "inpaint" else d.get("strength", 0.75)
        if r.seed == -1:
            r.seed = secrets.randbelow(2**32)
        _check(r, refiner_loaded=self.refiner is not None)
        if r.hires is not None:
            r.hires = dataclasses.replace(r.hires, steps=r.hires.steps or None)
            self._check_hires(r)
        if r.fast_decode and self.tiny_vae is None:
            raise UserError(missing_message(self.base.components.vae, self.base.source))
        if r.cache_interval > 1 and (r.controls or r.image_prompts):
            raise UserError("DeepCache (cache interval > 1) cannot run with ControlNets or IP-Adapters; use interval 1")
        for text in (r.prompt, r.negative_prompt):
            parse_prompt(text, r.prompt_syntax)  # a malformed weight fails here, not inside a batch
        self._check_clip_skip(r)
        return r

    def _resolve_adapters(self, r: GenerationRequest) -> None:
        """Adapters named anywhere (fields, ``<lora:name:w>`` tags, embedding names in the prompts) become
        checked file paths; a few-step LoRA brings its sampler, steps and guidance unless they are set."""
        r.prompt, tagged = prompt_loras(r.prompt)
        infos = [(self.adapters.lora(str(ref)), float(weight)) for ref, weight in [*r.loras, *tagged]]
        if len(infos) > MAX_LORAS:
            raise UserError(f"at most {MAX_LORAS} LoRAs a request; got {len(infos)}")
        for info, _ in infos:
            self.patcher.load(info)  # a LoRA for another architecture fails now, alone
        r.loras = [(str(info.path), weight) for info, weight in infos]
        named = self.adapters.embeddings_named_in(r.prompt, r.negative_prompt)
        embeddings = {e.path.resolve(): e for e in map(self.adapters.embedding, [*r.embeddings, *named])}
        for embedding in embeddings.values():
            self.patcher.check_fit(embedding)  # vectors for every text encoder, or a one-line error now
        r.embeddings = [str(path) for path in embeddings]
        few_step = next((info.few_step for info, weight in infos if info.few_step and weight > 0), None)
        few_step = few_step or FEW_STEP_SCHEDULERS.get(self.base.components.scheduler_config.get("_class_name"))
        if few_step is not None:
            r.scheduler = r.scheduler or few_step
            r.steps = r.steps or FEW_STEP_DEFAULTS["steps"]
            r.guidance_scale = FEW_STEP_DEFAULTS["guidance_scale"] if r.guidance_scale is None else r.guidance_scale

    def _check_hires(self, r: GenerationRequest) -> None:
        hr = r.hires
        if r.init_image is not None or r.refiner:
            raise UserError(
                "hires fix is for text-to-image without the refiner; img2img and inpainting run at the size asked"
            )
        if not 1 <= hr.scale <= MAX_HIRES_SCALE:
            raise UserError(f"hires scale must be between 1 and {MAX_HIRES_SCALE:g}, got {hr.scale}")
        if (hr.width or 0) < 0 or (hr.height or 0) < 0:
            raise UserError("hires width and height must be positive (0 or none: use the scale)")
        check_hires_size(r)  # the rule the server applies with its own side limit
        if hr.steps is not None and not 1 <= hr.steps <= MAX_STEPS:
            raise UserError(f"hires steps must be between 1 and {MAX_STEPS} (0: the first pass's), got {hr.steps}")
        if not 0 < hr.strength <= 1:
            raise UserError(f"hires strength (denoising strength) must be in (0, 1], got {hr.strength}")
        if int((hr.steps or r.steps) * hr.strength) < 1:
            raise UserError("hires strength x steps leaves no step to run; raise the hires strength or steps")
        if not is_latent_mode(hr.upscaler):
            self._upscaler(hr.upscaler)

    def _check_clip_skip(self, r: GenerationRequest) -> None:
        """Clip skip within every text tower the request uses (the layer read may go back to the token embeddings)."""
        models = [self.base] + ([self.refiner] if r.refiner and self.refiner is not None else [])
        most = min(
            getattr(m.components, slot).config.num_hidden_layers + 2 + m.components.family.layer
            for m in models
            for slot in m.components.family.towers
        )
        if r.clip_skip > most:
            raise FieldError("clip_skip", f"must be at most {most} for this model's text encoder, got {r.clip_skip}")

    def _resolve_image_prompt(self, prompt: ImagePrompt) -> ImagePrompt:
        """An image prompt with its adapter read and checked against this UNet now, alone."""
        info = self._ip_info(self._ip_adapter_path(prompt.model))
        self.ip_patcher.check(info)
        if not 1 <= len(prompt.images) <= MAX_IMAGE_PROMPTS:
            raise UserError(f"IP-Adapter {info.name} needs 1 to {MAX_IMAGE_PROMPTS} pictures; got {len(prompt.images)}")
        if not 0 <= prompt.scale <= MAX_CONTROL_SCALE:
            raise UserError(f"image prompt scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {prompt.scale}")
        return dataclasses.replace(prompt, model=str(info.path), images=list(prompt.images))

    def _ip_adapter_path(self, ref: str) -> Path:
        """An IP-Adapter named in the engine's folders, else (where paths are allowed, as LoRAs) a path."""
        named = ip_adapter_names(self.ip_adapter_dirs)
        if ref in named:
            return named[ref]
        path = Path(ref).expanduser()
        if path.exists() and (self.allow_paths or path.resolve() in {p.resolve() for p in named.values()}):
            return path
        raise UserError(f"unknown IP-Adapter {ref!r}; available: {', '.join(named) or 'none'}")

    def _ip_adapters(self, r: GenerationRequest):
        return [self._ip_info(Path(prompt.model)) for prompt in r.image_prompts]

    def _ip_info(self, path: Path):
        """The adapter's facts, read once per file version (a request reads them three times)."""
        stat = path.stat()
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size)
        if key not in self._ip_infos:
            self._ip_infos[key] = load_ip_adapter(path, allow_pickle=self.allow_pickle)
        return self._ip_infos[key]

    def _upscaler(self, name: str):
        return resolve_upscaler(name, self.upscaler_dirs, allow_pickle=self.allow_pickle, allow_paths=self.allow_paths)

    def _resolve_control(self, unit: ControlUnit) -> ControlUnit:
        """A unit with its model named by a checked path; the model is loaded now, so one made for another
        architecture, a bad map or setting fails this request alone, when it is accepted."""
        info = self.controls.info(unit.model)
        model = self.controls.load(info, self.base.components.unet, self.base.components.vae_scale)
        union_type_index(model, unit.control_type, info.name)
        if unit.image is None:
            raise UserError(f"ControlNet {info.name} has no control image")
        check_preprocessor(
            unit.preprocessor,
            resolution=unit.processor_res,
            threshold_a=unit.threshold_a,
            threshold_b=unit.threshold_b,
            model=unit.preprocessor_model,
        )
        if unit.guess_mode and isinstance(model, T2IAdapter):
            raise UserError(f"guess mode is for ControlNets; {info.name} is a T2I-Adapter")
        if unit.resize_mode not in RESIZE_MODES:
            raise UserError(f"control resize mode must be one of {', '.join(RESIZE_MODES)}; got {unit.resize_mode!r}")
        if not 0 <= unit.scale <= MAX_CONTROL_SCALE:
            raise UserError(f"control scale must be between 0 and {MAX_CONTROL_SCALE:g}, got {unit.scale}")
        if not 0 <= unit.start < unit.end <= 1:
            raise UserError(f"control start and end must satisfy 0 <= start < end <= 1; got {unit.start}, {unit.end}")
        return dataclasses.replace(unit, model=str(info.path))

    def batch_key(self, request: GenerationRequest) -> tuple:
        """What resolved requests must share to run as one batch: all but prompts, seeds, sample
        counts, images, the per-image micro-conditioning and the decoder (``fast_decode``: each image decodes
        alone); and the prompts' lengths in 75-token chunks, since conditioning of different lengths cannot be
        stacked (tokenizing only, no encoder)."""
        r = request
        size_and_schedule = (r.kind, r.width, r.height, r.steps, r.scheduler, r.strength)
        guidance = (r.guidance_scale, r.guidance_cutoff, r.guidance_rescale, r.cache_interval, r.clip_skip)
        adapters = tuple((path, weight) for path, weight in r.loras)  # LoRAs patch the weights the batch shares
        refiner = r.high_noise_fraction if r.refiner else None
        controls = tuple((u.model, u.scale, u.start, u.end, u.guess_mode, u.control_type) for u in r.controls)
        controls += tuple((p.model, p.scale, len(p.images)) for p in r.image_prompts)
        hires = tuple(r.hires.to_params().values()) if r.hires else None
        return (*size_and_schedule, *guidance, refiner, adapters, controls, hires, self._chunk_counts(r))

    def _chunk_counts(self, r: GenerationRequest) -> tuple[int, int | None]:
        """(base, refiner) chunk counts of the request's conditioning, counted as ``_rows`` will encode it: the
        base model's prompts with embedding names rewritten to their vector tokens, the refiner's as written."""
        words = embedding_tokens([self.adapters.embedding(path) for path in r.embeddings])
        texts = [rewrite_names(r.prompt, words), rewrite_names(r.negative_prompt, words)]
        tokens = [token for vector_tokens in words.values() for token in vector_tokens]
        base = chunk_count(self.base.components, texts, r.prompt_syntax, tokens)
        if not (r.refiner and self.refiner is not None):
            return base, None
        return base, chunk_count(self.refiner.components, [r.prompt, r.negative_prompt], r.prompt_syntax)

    def warnings(self, r: GenerationRequest) -> list[str]:
        """What may spoil a resolved request's images without making it wrong: a first pass far above the area the
        model was trained at draws repeated or broken shapes (the hires fix's second pass is made for large sizes)."""
        d = self.base.components.defaults
        native = (d.get("width", 1024), d.get("height", 1024))
        ratio = r.width * r.height / (native[0] * native[1])
        if ratio <= OVERSIZE_AREA:
            return []
        return [
            f"{r.width}x{r.height} is {ratio:.1f}x the area {self.model_name} was made for ({native[0]}x{native[1]}): "
            "expect repeated or broken shapes; generate near that size and enlarge with the hires fix or ssdxl upscale"
        ]

    def generate(self, request: GenerationRequest, callback: StepCallback | None = None) -> GenerationResult:
        r = self.resolve(request)
        self._use_threads(r)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        with torch.inference_mode(), self._patched(r):
            rows = self._rows(r, timings)
            images = [self._finish(self._sample([row], timings, callback), [row], timings)[0] for row in rows]
        timings["total"] = time.perf_counter() - t_start
        return GenerationResult(images=images, timings=timings, model=self.model_name, warnings=self.warnings(r))

    def _use_threads(self, r: GenerationRequest) -> None:
        """The whole request (text encoders, VAE, UNet) on the thread count its size calls for (``speed.threads``)."""
        scale = self.base.components.vae_scale
        self.runtime.use_threads(self.base.components.unet, (r.width // scale) * (r.height // scale))

    def generate_batch(
        self, requests: list[GenerationRequest], callback: StepCallback | None = None
    ) -> list[GenerationResult]:
        """One result per request, every sample of every request denoised in one UNet batch.

        The requests must have equal ``batch_key`` once resolved (ValueError otherwise). The
        callback sees the whole batch's latents, rows in request order (a request's samples
        together); raising from it stops the batch.
        """
        resolved = [self.resolve(r) for r in requests]
        if len({self.batch_key(r) for r in resolved}) > 1:
            raise ValueError("requests differ in settings that must be shared; group them by Engine.batch_key")
        self._use_threads(resolved[0])
        timings: dict[str, float] = {}
        t_start = time.perf_counter()
        with torch.inference_mode(), self._patched(resolved[0]):
            per_request = [self._rows(r, timings) for r in resolved]
            rows = [row for request_rows in per_request for row in request_rows]
            images = iter(self._finish(self._sample(rows, timings, callback), rows, timings))
            grouped = [[next(images) for _ in request_rows] for request_rows in per_request]
        timings["total"] = time.perf_counter() - t_start
        return [
            GenerationResult(images=group, timings=timings, model=self.model_name, warnings=self.warnings(r))
            for group, r in zip(grouped, resolved, strict=True)
        ]

    # ------------------------------------------------------------------ stages

    @contextmanager
    def _patched(self, r: GenerationRequest):
        """The base model with the request's LoRAs on, for the block (text encoding and denoising)."""
        loras = [(self.adapters.lora(path), weight) for path, weight in r.loras]
        image_prompts = [(info, p.scale) for info, p in zip(self._ip_adapters(r), r.image_prompts, strict=True)]
        key = self._fused_key(r)
        with self.patcher.applied(loras, fuse=self.fuse_loras), self.ip_patcher.applied(image_prompts):
            if key is not None and not self.runtime.has_adapted(self.base.components, key):
                # once per LoRA set: the UNet with them merged (already, when the engine fuses), as an OpenVINO graph
                with nullcontext() if self.fuse_loras else self.patcher.unet_fused(loras):
                    self.runtime.export_adapted(self.base.components, key)
            yield

    def _fused_key(self, r: GenerationRequest) -> str | None:
        """The fused OpenVINO export a request's UNet runs (``Runtime.adapted``), or None. Fused for good when the
        runtime runs OpenVINO and only LoRAs change the UNet's call, if one is a few-step LoRA (LCM, TCD: the
        real-time path, where the step is all the time there is) or the engine fuses LoRAs anyway."""
        if not r.loras or r.controls or r.image_prompts or r.cache_interval > 1:
            return None
        if not self.runtime.fusable(self.base.components.unet):
            return None
        loras = [(self.adapters.lora(path), weight) for path, weight in r.loras]
        if not (self.fuse_loras or any(lora.few_step for lora, _ in loras)):
            return None
        return adapters_key([(lora.hash, weight) for lora, weight in loras])

    def _conditioning(
        self, comps: Components, r: GenerationRequest, rewrite=lambda text: text
    ) -> tuple[Conditioning, Conditioning]:
        """Both branches' conditioning; ``rewrite`` puts embedding tokens where the prompts name them."""
        prompt, negative = rewrite(r.prompt), rewrite(r.negative_prompt)
        syntax = r.prompt_syntax
        zeros = comps.pipeline.get("force_zeros_for_empty_prompt", comps.family.empty_negative_zeros)
        if r.negative_prompt or not zeros:
            both, both_pooled = encode_text(comps, [prompt, negative], syntax, r.clip_skip)  # equal chunk counts
            embeds, neg_embeds = both.chunk(2)
            pooled, neg_pooled = both_pooled.chunk(2) if both_pooled is not None else (None, None)
        else:
            embeds, pooled = encode_text(comps, [prompt], syntax, r.clip_skip)
            neg_embeds, neg_pooled = empty_like(embeds, pooled)
        to = {"device": self.device, "dtype": self.dtype}
        cond = Conditioning(embeds.to(**to), _to(pooled, to), None)
        uncond = Conditioning(neg_embeds.to(**to), _to(neg_pooled, to), None)
        return self._sized(comps, (cond, uncond), r, r.width, r.height)

    def _sized(self, comps, conds, r, width: int, height: int) -> tuple[Conditioning, Conditioning]:
        """The (cond, uncond) pair with the micro-conditioning of an image ``width`` x ``height`` (SDXL; other
        families have none)."""
        if not comps.family.time_ids:
            return conds
        size = (width, height)
        original = (r.original_size or size)[::-1]  # requests hold (width, height); time_ids take (height, width)
        target = (r.target_size or size)[::-1]
        sized = []
        for part, score in zip(conds, (r.aesthetic_score, r.negative_aesthetic_score), strict=True):
            ids = micro_conditioning(comps, original, r.crop_top_left, target, score).to(self.device, self.dtype)
            sized.append(dataclasses.replace(part, time_ids=ids))
        return sized[0], sized[1]

    def _encode_pixels(self, image: Image.Image, width: int, height: int) -> torch.Tensor:
        vae = self.base.components.vae
        pixels = _to_tensor(image.convert("RGB").resize((width, height), Image.LANCZOS))
        pixels = pixels.to(self.device, self._vae_dtype(vae))
        with _vae_in(vae, self._vae_dtype(vae)):
            latents = vae.encode(pixels).latent_dist.mode()
        return to_unet(vae, latents).to(self.dtype)

    def _rows(self, r: GenerationRequest, timings: dict[str, float]) -> list[_Row]:
        """A resolved request's images-to-be: prompts, init image and control maps prepared once for all."""
        embeddings = [self.adapters.embedding(path) for path in r.embeddings]
        with _timed(timings, "text_encode"), self.patcher.embeddings_loaded(embeddings) as rewrite:
            base_cond = self._conditioning(self.base.components, r, rewrite)
            refiner_cond = self._conditioning(self.refiner.components, r) if r.refiner else None
        if r.image_prompts:
            with _timed(timings, "image_encode"):
                base_cond = self._with_image_prompts(base_cond, r)
        canvas = _canvas(r)
        init = self._encode_pixels(canvas.image, r.width, r.height) if canvas is not None else None
        with _timed(timings, "control_maps"):
            maps = [_control_map(unit, self.allow_pickle) for unit in r.controls]
        hints = [self._hint(unit, image, r.width, r.height) for unit, image in zip(r.controls, maps, strict=True)]
        hires = None
        if r.hires is not None:
            width, height = hires_size(r)
            conds = self._sized(self.base.components, base_cond, r, width, height)
            hires = _Pass(
                width, height, conds, [self._hint(u, m, width, height) for u, m in zip(r.controls, maps, strict=True)]
            )
        return [_Row(r, r.seed + i, base_cond, refiner_cond, init, canvas, hints, hires) for i in range(r.samples)]

    def _with_image_prompts(self, conds, r: GenerationRequest) -> tuple[Conditioning, Conditioning]:
        """The (cond, uncond) pair carrying each IP-Adapter's picture embeddings (uncond: its empty-image ones)."""
        pairs = [
            self.image_encoders.embeds(info, prompt.images, device=self.device, dtype=self.dtype)
            for info, prompt in zip(self._ip_adapters(r), r.image_prompts, strict=True)
        ]
        cond = dataclasses.replace(conds[0], image_embeds=[positive for _, positive in pairs])
        uncond = dataclasses.replace(conds[1], image_embeds=[negative for negative, _ in pairs])
        return cond, uncond

    def _hint(self, unit: ControlUnit, image: Image.Image, width: int, height: int) -> torch.Tensor:
        return control_tensor(image, width, height, unit.resize_mode).to(self.device, self.dtype)

    def _control_stack(self, rows: list[_Row], hires: bool = False) -> ControlStack | None:
        """The batch's control units, each unit's maps stacked row by row."""
        r = rows[0].request
        if not r.controls:
            return None
        units = []
        for k, unit in enumerate(r.controls):
            info = self.controls.info(unit.model)
            model: ControlModel = self.controls.load(info, self.base.components.unet, self.base.components.vae_scale)
            hint = torch.cat([(row.hires.hints if hires else row.hints)[k] for row in rows])
            type_index = union_type_index(model, unit.control_type, info.name)
            guess = unit.guess_mode or bool(getattr(model.config, "global_pool_conditions", False))  # as diffusers
            units.append(ActiveControl(model, hint, unit.scale, unit.start, unit.end, guess, type_index))
        return ControlStack(units)

    def _sample(self, rows: list[_Row], timings, callback) -> torch.Tensor:
        """Denoise a batch of rows that share their settings (``batch_key``); one CPU generator per row."""
        r = rows[0].request
        comps = self.base.components
        generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
        shape = (1, comps.unet.config.in_channels, r.height // comps.vae_scale, r.width // comps.vae_scale)
        noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
        noise = noise.to(self.device, self.dtype)
        scheduler = resolve_scheduler(r.scheduler).build(comps.scheduler_config)
        end = r.high_noise_fraction if r.refiner else 1.0
        timesteps = schedule_slice(scheduler, r.steps, strength=r.strength or 1.0, end=end)
        if not len(timesteps):
            raise UserError("strength x steps leaves no step to run; raise --strength or --steps")
        init = torch.cat([row.init for row in rows]) if r.init_image is not None else None
        if init is None or (r.strength or 1.0) >= 1.0:
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(init, noise, timesteps[:1])
        inpainting = None
        if r.kind == "inpaint":
            mask = torch.cat([_latent_mask(row.canvas.paint, latents) for row in rows])
            inpainting = Inpainting(init, noise, mask)
        with _timed(timings, "denoise"):
            latents = self._denoise(
                comps,
                scheduler,
                latents,
                timesteps,
                _stack([row.cond for row in rows]),
                r,
                generators,
                callback,
                inpainting,
                self._control_stack(rows),
            )
        _check_finite(latents, "base model latents", self.dtype)
        if r.refiner:
            refiner_cond = _stack([row.refiner_cond for row in rows])
            latents = self._refine(r, latents, refiner_cond, generators, timings, callback)
        if r.hires is not None:
            with _timed(timings, "hires"):
                latents = self._hires(rows, latents, callback)
            _check_finite(latents, "hires latents", self.dtype)
        return latents

    def _hires(self, rows: list[_Row], latents: torch.Tensor, callback) -> torch.Tensor:
        """A1111's second pass: the first pass upscaled (in latent space, or decoded, upscaled in pixels and
        encoded again), noised to ``hires.strength`` with each row's seed, and denoised at the new size."""
        r, hr = rows[0].request, rows[0].request.hires
        comps = self.base.components
        width, height = rows[0].hires.width, rows[0].hires.height
        if is_latent_mode(hr.upscaler):
            latents = upscale_latents(latents, (height // comps.vae_scale, width // comps.vae_scale), hr.upscaler)
        else:
            upscaler = self._upscaler(hr.upscaler)
            images = [self._decode(comps.vae, row_latents) for row_latents in latents.split(1)]
            big = [upscale_image(image, upscaler, size=(width, height), device=self.device) for image in images]
            latents = torch.cat([self._encode_pixels(image, width, height) for image in big])
        generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
        noise = torch.cat([torch.randn((1, *latents.shape[1:]), generator=g, dtype=torch.float32) for g in generators])
        scheduler = resolve_scheduler(r.scheduler).build(comps.scheduler_config)
        timesteps = schedule_slice(scheduler, hr.steps or r.steps, strength=hr.strength)  # >= 1 step: _check_hires
        latents = scheduler.add_noise(latents, noise.to(self.device, self.dtype), timesteps[:1])
        conds = _stack([row.hires.cond for row in rows])
        controls = self._control_stack(rows, hires=True)
        return self._denoise(comps, scheduler, latents, timesteps, conds, r, generators, callback, None, controls)

    def _finish(self, latents: torch.Tensor, rows: list[_Row], timings) -> list[GeneratedImage]:
        """Decode each row on its own (as a lone request would), composite inpainting, record parameters."""
        images = []
        for row, row_latents in zip(rows, latents.split(1), strict=True):
            r = row.request
            with _timed(timings, "decode"):
                if r.fast_decode:
                    image = self._decode_tiny(row_latents)
                else:
                    image = self._decode(self._final_vae(r), row_latents)
            if r.kind == "inpaint":
                image = _composite(row.canvas.image.resize(image.size), image, row.canvas.keep.resize(image.size))
            params = {
                **r.to_params(),
                "seed": row.seed,
                "samples": 1,
                "model": self.base.source,
                "refiner_model": self.refiner.source if r.refiner else None,
                "vae": self.base.vae,
                "vae_hash": self.base.vae_hash or None,
                "tiny_vae": self.tiny_vae.name if r.fast_decode else None,  # the decoder of --fast-decode
                "tiny_vae_hash": self.tiny_vae.hash if r.fast_decode else None,
                # what the scheduler was told the model predicts (--prediction / --zero-snr re-applied by --from-png)
                "prediction": self.base.components.scheduler_config.get("prediction_type", "epsilon"),
                "zero_snr": bool(self.base.components.scheduler_config.get("rescale_betas_zero_snr")),
                "dtype": dtype_name(self.dtype),
                "device": self.device.type,
                "backend": self.runtime.unet_path(
                    self.base.components.unet, row_latents, r.cache_interval, _patched_unet(r), self._fused_key(r)
                ),
                **self._adapter_records(r),
            }
            info = build_infotext(params, model_name=self.model_name, model_hash=self.base.hash, version=__version__)
            images.append(GeneratedImage(image=image, seed=row.seed, infotext=info, params=params))
        return images

    def _adapter_records(self, r: GenerationRequest) -> dict[str, dict]:
        """Each adapter's name and file hash, as A1111 records them (``--from-png`` checks them), and for each
        LoRA the layers it patched and the ones it names that this model lacks (an SDXL LoRA on Vega)."""
        loras = [self.adapters.lora(path) for path, _ in r.loras]
        embeddings = [self.adapters.embedding(path) for path in r.embeddings]
        return {
            "lora_hashes": {a.name: a.hash for a in loras},
            "lora_layers": {
                a.name: dict(zip(("patched", "skipped"), self.patcher.load(a), strict=True)) for a in loras
            },
            "embedding_hashes": {a.name: a.hash for a in embeddings},
        }

    def _refine(self, r, latents, refiner_cond, generators, timings, callback) -> torch.Tensor:
        """Finish the schedule with the refiner from where the base stopped, without decoding."""
        comps = self.refiner.components
        scheduler = resolve_scheduler(r.scheduler).build(comps.scheduler_config)
        timesteps = schedule_slice(scheduler, r.steps, strength=r.strength or 1.0, start=r.high_noise_fraction)
        with _timed(timings, "refine"):
            latents = self._denoise(comps, scheduler, latents, timesteps, refiner_cond, r, generators, callback)
        _check_finite(latents, "refiner latents", self.dtype)
        return latents

    def _denoise(
        self, comps, scheduler, latents, timesteps, conds, r, generators, callback, inpainting=None, controls=None
    ):
        """One model's part of the schedule: the request's model call (the runtime's UNet: eager, DeepCache
        or OpenVINO, with the control units' residuals) under guidance and inpainting, stepped by the loop."""
        base = comps is self.base.components
        patched, fused = base and _patched_unet(r), self._fused_key(r) if base else None
        model = ModelCall(self.runtime.unet(comps.unet, latents, r.cache_interval, patched, fused), controls)
        denoiser = GuidedDenoiser(
            model,
            scheduler,
            timesteps,
            *conds,
            r.guidance_scale,
            guidance_cutoff=r.guidance_cutoff,
            guidance_rescale=r.guidance_rescale,
            inpainting=inpainting,
        )
        return denoise(denoiser, scheduler, latents, timesteps, generators, callback=callback)

    def _final_vae(self, r: GenerationRequest):
        return (self.refiner if r.refiner else self.base).components.vae

    def _vae_dtype(self, vae) -> torch.dtype:
        """float16 VAEs that overflow (the original SDXL VAE) run in float32 instead."""
        if self.dtype == torch.float16 and vae.config.get("force_upcast", False):
            return torch.float32
        return self.dtype

    def _decode(self, vae, latents: torch.Tensor) -> Image.Image:
        image = self._run_vae_decode(vae, latents, self._vae_dtype(vae))
        if not torch.isfinite(image).all() and self._vae_dtype(vae) != torch.float32:
            image = self._run_vae_decode(vae, latents, torch.float32)  # overflow at low precision: retry
        _check_finite(image, "decoded image", self.dtype)
        return _to_pil(image[0])

    def _decode_tiny(self, latents: torch.Tensor) -> Image.Image:
        """The fast decode: the tiny VAE reads the UNet's latents as diffusers' pipelines give them to an
        AutoencoderTiny (``ssdxl.models.tiny_vae.decode``), in the engine's dtype (float32 again on overflow)."""
        image = self.tiny_vae.decode(latents)
        if not torch.isfinite(image).all() and self.tiny_vae.model.dtype != torch.float32:
            image = self.tiny_vae.decode(latents, torch.float32)
        _check_finite(image, "decoded image", self.dtype)
        return _to_pil(image[0])

    def _run_vae_decode(self, vae, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        decoder = self.runtime.decoder(vae, latents)
        if decoder is not None and dtype == self.dtype:  # a float32 retry after overflow stays in PyTorch
            return decoder(to_vae(vae, latents))
        with _vae_in(vae, dtype):
            return vae.decode(to_vae(vae, latents).to(dtype)).sample.float()


# ---------------------------------------------------------------------- helpers


@dataclasses.dataclass
class _Pass:
    """A hires second pass of one row: its size, conditioning at that size and control maps."""

    width: int
    height: int
    cond: tuple[Conditioning, Conditioning]
    hints: list[torch.Tensor]


@dataclasses.dataclass
class _Row:
    """One image to make: its resolved request, seed, (cond, uncond) pairs, encoded init image, the canvas it
    paints on (inpainting and outpainting), its control maps and its hires pass."""

    request: GenerationRequest
    seed: int
    cond: tuple[Conditioning, Conditioning]
    refiner_cond: tuple[Conditioning, Conditioning] | None
    init: torch.Tensor | None
    canvas: outpaint.Canvas | None = None
    hints: list[torch.Tensor] = dataclasses.field(default_factory=list)
    hires: _Pass | None = None


def _canvas(r: GenerationRequest) -> outpaint.Canvas | None:
    """What an image-to-image request paints on: the init image with the user's mask, or the grown canvas."""
    if r.init_image is None:
        return None
    if r.outpaint:
        return outpaint.grow(r.init_image, r.outpaint)
    mask = r.mask_image if r.mask_image is not None else Image.new("L", r.init_image.size, 255)
    return outpaint.Canvas(r.init_image, mask, mask)


def _control_map(unit: ControlUnit, allow_pickle: bool) -> Image.Image:
    if unit.preprocessor == "none":
        return unit.image
    return preprocess(
        unit.preprocessor,
        unit.image,
        resolution=unit.processor_res,
        threshold_a=unit.threshold_a,
        threshold_b=unit.threshold_b,
        model=unit.preprocessor_model,
        allow_pickle=allow_pickle,
    )


def _check_pair(base: LoadedModel, refiner: LoadedModel) -> None:
    """Refused at load: a refiner of another latent space would finish the base's latents into an image of the wrong
    size and colours, under an infotext saying the size asked."""
    spaces = [latent_space(m.components.vae) for m in (base, refiner)]
    if spaces[0] != spaces[1]:
        raise UserError(
            f"refiner {refiner.source} cannot finish {base.source}'s images: their latents differ "
            f"(base: {spaces[0]}; refiner: {spaces[1]}); use a refiner made for this model"
        )


def _patched_unet(r: GenerationRequest) -> bool:
    """Whether the request changes the base UNet's call (LoRAs, control residuals, image prompts), so it runs
    in PyTorch: an exported OpenVINO graph has none of them."""
    return bool(r.loras or r.controls or r.image_prompts)


def _stack(pairs: list[tuple[Conditioning, Conditioning]]) -> tuple[Conditioning, Conditioning]:
    """Per-row (cond, uncond) pairs as one batched (cond, uncond) pair."""
    lengths = sorted({part.embeds.shape[1] for pair in pairs for part in pair})
    if len(lengths) > 1:  # Engine.batch_key compares chunk counts, so only a miscount gets here
        raise ValueError(
            f"conditioning of different lengths ({', '.join(map(str, lengths))} tokens) cannot share a batch; "
            "group requests by Engine.batch_key"
        )
    return Conditioning.cat([c for c, _ in pairs]), Conditioning.cat([u for _, u in pairs])


def _load(
    source,
    device: torch.device,
    dtype: torch.dtype,
    allow_pickle: bool,
    prediction: str | None = None,
    zero_snr: bool = False,
) -> LoadedModel:
    """``prediction`` / ``zero_snr``: ``load_components``' scheduler overrides (given for the base model only)."""
    components = load_components(
        source, dtype=dtype, allow_pickle=allow_pickle, prediction=prediction, zero_snr=zero_snr
    ).to(device, dtype)
    for module in components.modules().values():
        module.eval().requires_grad_(False)
    source_text = builtin.DEFAULT_MODEL if source is None else str(source)
    path = builtin.resolve(source_text) or Path(source_text)
    weights = weights_file(path) if path.exists() else None
    return LoadedModel(components, source_text, file_hash(weights) if weights else "")


def _swap_vae(model: LoadedModel, source: str | Path, device: torch.device, dtype: torch.dtype, allow_pickle) -> None:
    """Replace the model's VAE with the one at ``source`` (``ssdxl.models.vae``)."""
    comps = model.components
    comps.vae = load_vae(source, comps.vae, dtype=dtype, allow_pickle=allow_pickle).to(device).eval()
    comps.vae.requires_grad_(False)
    weights = vae_weights(source)
    model.vae, model.vae_hash = Path(source).expanduser().name, file_hash(weights) if weights else ""


def _load_tiny(model: LoadedModel, source, device: torch.device, dtype: torch.dtype, allow_pickle) -> TinyVAE | None:
    """The tiny VAE at ``source``, or the built-in one made for the model's latents (the built-in models and
    models fine-tuned from them), or None."""
    vae = model.components.vae
    path = Path(source).expanduser() if source is not None else builtin.tiny_vae(latent_space(vae))
    if path is None:
        return None
    tiny = load_tiny_vae(path, vae, dtype=dtype, allow_pickle=allow_pickle, model=model.source)
    tiny.model.to(device)
    return tiny


def _check(r: GenerationRequest, refiner_loaded: bool) -> None:
    """What ``check_request`` could not see before the defaults were filled in: the sides the model's defaults or the
    init image chose, and a refiner to hand over to."""
    for name in ("width", "height"):
        check_side(name, getattr(r, name))
    if r.refiner and not refiner_loaded:
        raise UserError("refiner requested but no refiner model is loaded (pass --refiner MODEL)")


def _to(tensor: torch.Tensor | None, to: dict) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(**to)


def _check_finite(tensor: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    if not torch.isfinite(tensor).all():
        hint = "; try --dtype float32" if dtype != torch.float32 else ""
        raise GenerationError(f"the model produced NaN/inf values in the {what}{hint}")


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


@contextmanager
def _vae_in(vae, dtype: torch.dtype):
    original = vae.dtype
    if dtype != original:
        vae.to(dtype)
    try:
        yield
    finally:
        if dtype != original:
            vae.to(original)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def _to_pil(image: torch.Tensor) -> Image.Image:
    """[-1, 1] pixels to 8 bits with diffusers' own arithmetic (``VaeImageProcessor.postprocess``), so equal
    latents give equal images, not ones a rounding apart."""
    array = (image * 0.5 + 0.5).clamp(0, 1).cpu().permute(1, 2, 0).float().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))


def _latent_mask(mask: Image.Image, latents: torch.Tensor) -> torch.Tensor:
    h, w = latents.shape[-2:]
    small = np.asarray(mask.convert("L").resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(small)[None, None].to(latents.device, latents.dtype)


def _composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Keep the original pixels exactly where the mask is black; blend where it is grey."""
    return Image.composite(generated, original.convert("RGB"), mask.convert("L"))
