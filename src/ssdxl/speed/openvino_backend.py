"""OpenVINO runtime for the UNet and the VAE decoder (the optional ``openvino`` extra).

Why: on CPUs OpenVINO fuses the many memory-bound element-wise ops (group norm, SiLU, residual
adds, layout changes) that eager PyTorch runs one by one, and compiles for one static shape; on
this project's machines that made a UNet step about twice as fast as eager bfloat16
(``docs/performance.md``). This is what optimum-intel does for diffusers pipelines, done directly
with ``ov.convert_model``: optimum-intel pins transformers < 5.6 and needs torchvision, so it
cannot share an environment with this project.

The IR is traced once in the model's dtype with dynamic shapes (``export``), then reshaped to each
request's static shape and compiled on first use (a few seconds, cached per shape). Inputs and
outputs are float32 at the boundary; the timestep stays float32 inside so the sinusoidal
embedding is as exact as in PyTorch. ``int8=True`` compresses the weights to 8 bits with NNCF
(asymmetric, per channel), as the OpenVINO SDXL notebook does.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssdxl.errors import UserError
from ssdxl.models.components import Components
from ssdxl.models.families import time_ids_of, unet_inputs
from ssdxl.paths import cache_dir
from ssdxl.sampling.precision import cpu_has_fast_bf16
from ssdxl.speed import threads

UNET_XML = "unet.xml"
DECODER_XML = "vae_decoder.xml"
MANIFEST = "ssdxl-openvino.json"
FORMAT = 1
MAX_COMPILED_SHAPES = 2  # guided and unguided batch of one size; a new size evicts the oldest
ABANDONED_AFTER_S = 6 * 3600  # a half-written export older than this belongs to a process that died
INT8_MODES = ("full", "hybrid", "weights")  # ``export(int8=...)``: what NNCF quantizes
# Layers ``full`` leaves unquantized, and SmoothQuant off: chosen on the built-in model's adherence (all attributes
# right: 97% with NNCF's defaults, 99% so, 100% in bf16; docs/performance.md, INT8); a sliver of the work.
INT8_KEPT = (".*conv_in.*", ".*conv_out.*", ".*time_embedding.*")


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino():
    try:
        import openvino
    except ImportError:
        raise UserError("the OpenVINO backend needs the openvino package: pip install openvino") from None
    return openvino


def default_dir(model_hash: str) -> Path:
    """Where ``ssdxl export openvino`` puts a model's IR unless told otherwise: keyed by the weights' hash."""
    return cache_dir() / "openvino" / model_hash


def is_exported(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export in this version's format (else it is exported again)."""
    return _manifest(folder).get("format") == FORMAT


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


class _UNetGraph(torch.nn.Module):
    """The UNet call with flat tensor inputs, as a traceable module."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, *pooled_and_time_ids):
        names = ("text_embeds", "time_ids")  # SDXL only
        added = dict(zip(names, pooled_and_time_ids, strict=True)) if pooled_and_time_ids else None
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)[0]


class _DecoderGraph(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents).sample


def convert_unet(unet: torch.nn.Module, time_ids: int | None = None, *, float32: bool = False):
    """The UNet as an OpenVINO model with dynamic shapes, traced in the module's dtype (``float32``: in float32,
    which NNCF's calibration runs in). ``time_ids``: the family's micro-conditioning count (None: a base model's,
    from the config)."""
    if float32 and unet.dtype != torch.float32:
        original = unet.dtype
        try:
            return convert_unet(unet.to(torch.float32), time_ids, float32=True)
        finally:
            unet.to(original)
    ov = _openvino()
    config, dtype = unet.config, unet.dtype
    side = _latent_multiple(config)
    count = time_ids_of(config) if time_ids is None else time_ids
    kw = unet_inputs(config, count, 2, side, side, lambda *shape: torch.randn(shape, dtype=dtype))
    added = list((kw["added_cond_kwargs"] or {}).values())
    inputs = (kw["sample"], torch.tensor([500.0, 500.0]), kw["encoder_hidden_states"], *added)
    with torch.inference_mode(False), torch.no_grad(), _contiguous(unet), _quiet_tracing():  # also mid-generation
        return _float32_boundary(ov, ov.convert_model(_UNetGraph(unet), example_input=inputs, share_weights=False))


def convert_decoder(vae: torch.nn.Module):
    ov = _openvino()
    side = 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(1, vae.config.latent_channels, side, side, dtype=vae.dtype)
    with torch.no_grad(), _contiguous(vae), _quiet_tracing():
        return _float32_boundary(
            ov, ov.convert_model(_DecoderGraph(vae), example_input=(latents,), share_weights=False)
        )


def export(
    components: Components,
    folder: Path,
    *,
    int8: str | None = None,
    calibration: list[list[np.ndarray]] | None = None,
    decoder: bool = True,
    progress: bool = False,
    replace: bool = False,
) -> Path:
    """Convert the UNet (and the VAE decoder, unless ``decoder`` is False) to OpenVINO IR in ``folder``: seconds
    for the built-in model, a minute or more for full-size ones (docs/performance.md). The IR is written beside
    ``folder`` and moved into place when complete, so a process that stops half-way, or another one exporting the
    same model at the same time, never leaves a half export that looks finished; an export already there is kept
    unless ``replace`` (an explicit ``ssdxl export openvino``).

    ``int8`` (``INT8_MODES``): ``weights`` compresses the UNet's and decoder's weights (NNCF, no data needed);
    ``full`` quantizes the UNet's activations and weights (but ``INT8_KEPT``), ``hybrid`` its convolutions fully
    and the other weights only (optimum-intel's mode for diffusion UNets); both learn activation ranges from
    ``calibration`` (the UNet's recorded inputs, ``ssdxl.speed.calibration``) and leave the decoder as it is."""
    ov = _openvino()
    if int8 is not None and int8 not in INT8_MODES:
        raise UserError(f"unknown INT8 mode {int8!r}; use {', '.join(INT8_MODES)}")
    if int8 in ("full", "hybrid") and not calibration:
        raise UserError(f"INT8 {int8} quantization needs calibration data (the UNet's inputs while it samples)")
    unet = components.unet
    converters: list[tuple[str, Callable[[], Any]]] = [
        (
            UNET_XML,
            lambda: quantize_int8(
                convert_unet(unet, components.family.time_ids, float32=bool(calibration)), int8, calibration
            ),
        )
    ]
    if decoder:
        converters.append(
            (
                DECODER_XML,
                lambda: quantize_int8(convert_decoder(components.vae), "weights" if int8 == "weights" else None, None),
            )
        )
    _remove_abandoned(folder)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # threads of one process may export at once, too
    partial = folder.with_name(f"{folder.name}.partial-{token}")
    partial.mkdir(parents=True)
    try:
        with _stages(len(converters), f"OpenVINO export of {components.name} (once)", progress) as advance:
            for name, convert in converters:
                model = convert()
                ov.save_model(model, partial / name, compress_to_fp16=False)
                del model
                advance()
        manifest = {"format": FORMAT, "model": components.name, "dtype": str(components.unet.dtype), "int8": int8}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if replace or not is_exported(folder):  # else another process finished first: keep its export
            old = folder.with_name(f"{folder.name}.old-{token}")
            if folder.exists():
                os.replace(folder, old)
            os.replace(partial, folder)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _remove_abandoned(folder: Path) -> None:
    """Deletes half-written exports of ``folder`` untouched for ``ABANDONED_AFTER_S`` (a process died exporting;
    gigabytes each). Age, not pid: a cache folder may be shared by processes of other containers or hosts."""
    if not folder.parent.is_dir():
        return
    for leftover in folder.parent.glob(f"{folder.name}.partial-*"):
        try:
            stale = time.time() - leftover.stat().st_mtime > ABANDONED_AFTER_S
        except OSError:  # another process finished or removed it
            continue
        if stale:
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def _stages(total: int, description: str, show: bool) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr over the export's parts (a UNet's conversion is one long step)."""
    if not show:
        yield lambda: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="part", leave=False) as bar:
        yield lambda: bar.update(1)


@contextmanager
def _contiguous(module: torch.nn.Module) -> Iterator[None]:
    """OpenVINO's PyTorch frontend reads weights as contiguous memory: channels-last convolution
    weights (``tuning``) come out as garbage, so convert from the default layout and restore after."""
    channels_last = any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in module.parameters()
    )
    module.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        if channels_last:
            module.to(memory_format=torch.channels_last)


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Without the tracer's warnings about diffusers' shape checks (``assert``, ``if x.shape[0] >= 64``): they hold
    for every shape the graph is compiled for, and a user's first image should not print a page of them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _latent_multiple(config: Any) -> int:
    """Latent sides the UNet halves evenly at every level are multiples of this."""
    return 2 ** (len(config.block_out_channels) - 1)


def _float32_boundary(ov, model):
    """Inputs and outputs as float32, whatever precision the graph computes in."""
    ppp = ov.preprocess.PrePostProcessor(model)
    for i, port in enumerate(model.inputs):
        if port.get_element_type() != ov.Type.f32:
            ppp.input(i).tensor().set_element_type(ov.Type.f32)
    for i, port in enumerate(model.outputs):
        if port.get_element_type() != ov.Type.f32:
            ppp.output(i).tensor().set_element_type(ov.Type.f32)
    return ppp.build()


def quantize_int8(model, mode: str | None, calibration: list[list[np.ndarray]] | None):
    """``model`` quantized by NNCF as ``mode`` says (None: as it is); ``calibration``: lists of its inputs."""
    if mode is None:
        return model
    try:
        import nncf
    except ImportError:
        raise UserError("INT8 needs NNCF: pip install 'ssdxl[openvino]'") from None
    if mode == "weights":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    data = nncf.Dataset(calibration)
    settings = {"subset_size": len(calibration), "model_type": nncf.ModelType.TRANSFORMER}
    if mode == "full":  # but ``INT8_KEPT``, and without SmoothQuant
        edges = nncf.IgnoredScope(patterns=list(INT8_KEPT), validate=False)
        plain = nncf.AdvancedQuantizationParameters(smooth_quant_alpha=-1)
        return nncf.quantize(model, data, ignored_scope=edges, advanced_parameters=plain, **settings)
    weighted = [op.get_friendly_name() for op in model.get_ordered_ops() if _has_weights(op)]  # hybrid
    model = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=nncf.IgnoredScope(types=["Convolution"])
    )
    return nncf.quantize(model, data, ignored_scope=nncf.IgnoredScope(names=weighted, validate=False), **settings)


def _has_weights(op) -> bool:
    """A MatMul whose second input is a constant (possibly converted): a linear layer's weights."""
    if op.get_type_name() != "MatMul":
        return False
    source = op.input_value(1).get_node()
    while source.get_type_name() == "Convert":
        source = source.input_value(0).get_node()
    return source.get_type_name() == "Constant"


class _Compiled:
    """One model (an IR file or a converted ``ov.Model``), compiled once per static input shape."""

    def __init__(self, model: Any, precision: str):
        ov = _openvino()
        self._core = ov.Core()
        self._model = self._core.read_model(model) if isinstance(model, Path) else model
        # As many threads as the user gave torch, else the cores torch started with (not its current count, which a
        # small model's request may have lowered): left alone, OpenVINO takes every core, and on a busy machine its
        # threads wait for the cores that another process holds.
        # CACHE_DIR: OpenVINO keeps each compiled shape on disk, so the next process loads it instead of compiling
        self._config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads() if threads.pinned() else threads.DEFAULT,
            "CACHE_DIR": str(cache_dir() / "openvino" / "compiled"),
        }
        self._compiled: dict[tuple, Any] = {}

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        shapes = tuple(a.shape for a in inputs)
        if shapes not in self._compiled:
            if len(self._compiled) >= MAX_COMPILED_SHAPES:  # each holds its own copy of the weights
                del self._compiled[next(iter(self._compiled))]
            ports = self._model.inputs
            self._model.reshape({port.get_any_name(): list(s) for port, s in zip(ports, shapes, strict=True)})
            self._compiled[shapes] = self._core.compile_model(self._model, "CPU", self._config)
        return self._compiled[shapes](list(inputs))[0]


class OpenVINOUNet:
    """Drop-in for the diffusers UNet call that the denoising loop makes."""

    def __init__(self, model: Any, config: Any, dtype: torch.dtype, precision: str):
        self.config = config
        self.dtype = dtype
        self._run = _Compiled(model, precision)

    def supports(self, latent_shape: torch.Size) -> bool:
        """Traced for latents the UNet halves evenly at every level; others take diffusers' resize path."""
        return all(side % _latent_multiple(self.config) == 0 for side in latent_shape[-2:])

    def __call__(self, sample: torch.Tensor, timestep: Any, *, encoder_hidden_states, added_cond_kwargs, **_):
        batch = sample.shape[0]
        timesteps = np.full((batch,), float(timestep), dtype=np.float32)
        added = [added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]] if added_cond_kwargs else []
        out = self._run(_array(sample), timesteps, _array(encoder_hidden_states), *map(_array, added))
        return (torch.from_numpy(out).to(sample.dtype),)


class OpenVINODecoder:
    """The VAE decoder: unscaled latents in, pixels in [-1, 1] out (float32)."""

    def __init__(self, model: Any, precision: str):
        self._run = _Compiled(model, precision)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._run(_array(latents)))


def load(folder: Path, components: Components) -> tuple[OpenVINOUNet, OpenVINODecoder]:
    """The exported UNet and decoder of ``components``, computing in bfloat16 where the CPU has it."""
    unet = load_unet(folder, components)
    return unet, OpenVINODecoder(folder / DECODER_XML, precision_hint(components.unet.dtype))


def load_unet(folder: Path, components: Components) -> OpenVINOUNet:
    if not is_exported(folder):
        if _manifest(folder):
            raise UserError(f"{folder} was exported by another ssdxl version; export again")
        raise UserError(f"{folder} holds no OpenVINO export; run: ssdxl export openvino MODEL")
    unet = components.unet
    return OpenVINOUNet(folder / UNET_XML, unet.config, unet.dtype, precision_hint(unet.dtype))


def precision_hint(dtype: torch.dtype) -> str:
    """OpenVINO computes in bfloat16 where the CPU has it and the model is not float32."""
    return "bf16" if cpu_has_fast_bf16() and dtype != torch.float32 else "f32"


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()
