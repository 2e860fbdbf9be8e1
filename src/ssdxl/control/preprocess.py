"""Weight-free control-map preprocessors, under the module names sd-webui-controlnet (A1111) and ComfyUI
users know, so a ControlNet / T2I-Adapter unit can start from a plain photo or drawing.

Everything here is OpenCV + numpy except ``depth``, which runs a transformers depth estimator from a
local folder. Detectors that need weights ssdxl does not ship (openpose, HED, PiDiNet, MLSD, normals,
segmentation, the learned lineart models) are recognised by name and refused with a hint: make that
map elsewhere and pass it with preprocessor ``none``.

``resolution`` is sd-webui-controlnet's "processor_res": the input is scaled (cubic up, area down)
so its short side equals ``resolution``, keeping the aspect ratio, and the map is made at that size.
Both sides are rounded to the nearest multiple of 8 (SDXL's latent stride). sd-webui-controlnet instead
pads to a multiple of 64 for its networks and crops the pad away again, so its short side is exactly
``resolution``; for the multiples of 8 its slider offers, the two agree on the short side and differ
by at most 7 px on the long one. ``None`` or 0 keeps the input size, -1 (A1111's "unset") means 512.
Modules without a Resolution slider (none, invert, tile_resample) always keep the input size, as there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ssdxl.errors import UserError, first_line

UNSET = -1  # sd-webui-controlnet's "use the slider's default" for processor_res and thresholds
MAX_SIDE = 8192  # a longer map side is an aspect-ratio accident, not a control map


@dataclass(frozen=True)
class Slider:
    """One of a module's settings, as sd-webui-controlnet's UI shows it (and its API lists it)."""

    label: str
    minimum: float
    maximum: float
    value: float
    step: float = 1.0

    def api_json(self) -> dict[str, Any]:
        """The shape ``/controlnet/module_list`` gives each slider in ``module_detail``."""
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


RESOLUTION = Slider("Resolution", 64, 2048, 512, 8)


@dataclass(frozen=True)
class _Settings:
    """What a module's function gets besides the image: the resolved slider values and the extras."""

    a: float
    b: float
    seed: int
    model: Path | None
    allow_pickle: bool


Run = Callable[[np.ndarray, _Settings], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    """A module: its sd-webui-controlnet key (``name``), UI label, other accepted names and sliders."""

    name: str
    summary: str
    run: Run = field(repr=False)
    label: str = ""
    aliases: tuple[str, ...] = ()
    slider_a: Slider | None = None
    slider_b: Slider | None = None
    uses_resolution: bool = True

    @property
    def takes_model(self) -> bool:
        """Whether the module runs an estimator from a local folder (``model=PATH``): only ``depth``."""
        return self.run is _depth

    @property
    def sliders(self) -> list[Slider]:
        """Resolution (where the module has it), then threshold_a's and threshold_b's sliders."""
        optional = (RESOLUTION if self.uses_resolution else None, self.slider_a, self.slider_b)
        return [s for s in optional if s is not None]

    @property
    def names(self) -> tuple[str, ...]:
        """Every spelling that selects the module: A1111 clients send keys or labels, ComfyUI users aliases."""
        return (self.name, self.label or self.name, *self.aliases)


# ---------------------------------------------------------------- the modules (RGB uint8 HxWx3 in, HxW or HxWx3 out)


def _identity(img: np.ndarray, s: _Settings) -> np.ndarray:
    return img


def _invert(img: np.ndarray, s: _Settings) -> np.ndarray:
    return 255 - img


def _canny(img: np.ndarray, s: _Settings) -> np.ndarray:
    return cv2.Canny(img, round(s.a), round(s.b))


def _threshold(img: np.ndarray, s: _Settings) -> np.ndarray:
    """White where even the darkest channel is above the level; level 0 lets Otsu's method pick it."""
    otsu = cv2.THRESH_OTSU if s.a == 0 else 0
    return cv2.threshold(img.min(axis=2), s.a, 255, cv2.THRESH_BINARY | otsu)[1]


def _xdog_lines(img: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels darker than their surroundings (a fine-minus-coarse difference of Gaussians): the strokes."""
    x = img.astype(np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), 5.0) - cv2.GaussianBlur(x, (0, 0), 0.5), axis=2)
    return np.where(2 * darker > threshold, 255, 0).astype(np.uint8)


def _scribble_xdog(img: np.ndarray, s: _Settings) -> np.ndarray:
    return _xdog_lines(img, s.a)


def _scribble(img: np.ndarray, s: _Settings) -> np.ndarray:
    """XDoG strokes blurred then re-binarised low, which thickens and rounds them like a marker drawing."""
    thick = cv2.GaussianBlur(_xdog_lines(img, s.a), (0, 0), 3.0)
    return np.where(thick > 4, 255, 0).astype(np.uint8)


def _softedge_gradient(img: np.ndarray, s: _Settings) -> np.ndarray:
    """Scale-normalised gradient magnitude summed over three blur scales (strongest channel), softly
    saturated: full contrast edges come out near white, faint texture grey, flat areas black."""
    x = img.astype(np.float32) / 255.0
    total = np.zeros(x.shape[:2], np.float32)
    for sigma in (1.0, 2.0, 4.0):
        blurred = cv2.GaussianBlur(x, (0, 0), sigma)
        magnitude = np.hypot(cv2.Sobel(blurred, cv2.CV_32F, 1, 0), cv2.Sobel(blurred, cv2.CV_32F, 0, 1))
        total += sigma * magnitude.max(axis=2)
    return np.rint(255 * (1 - np.exp(-total / 3.0))).astype(np.uint8)


def _lineart_standard(img: np.ndarray, s: _Settings) -> np.ndarray:
    """How much darker each pixel is than a wide blur of its neighbourhood, scaled so the median stroke
    lands at the intensity slider (sd-webui-controlnet's fixed 127 is the default)."""
    x = img.astype(np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strokes = darker[darker > 8]
    scale = max(16.0, float(np.median(strokes))) if strokes.size else 16.0
    return (darker / scale * s.a).clip(0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int = 256) -> np.ndarray:
    """Uniform noise on a coarse grid, cubic-upsampled and stretched to 0..1: a slowly wandering field."""
    coarse = rng.uniform(size=(height // cell + 2, width // cell + 2)).astype(np.float32)
    noise = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell : cell + height, cell : cell + width]
    noise -= noise.min()
    peak = noise.max()
    return noise / peak if peak > 0 else noise


def _shuffle(img: np.ndarray, s: _Settings) -> np.ndarray:
    """Content shuffle: every pixel is fetched from where a seeded random flow points, keeping colours
    and textures but scrambling the layout."""
    height, width = img.shape[:2]
    rng = np.random.default_rng(s.seed)
    map_x = _smooth_noise(rng, height, width) * (width - 1)
    map_y = _smooth_noise(rng, height, width) * (height - 1)
    return cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR)


def _tile_resample(img: np.ndarray, s: _Settings) -> np.ndarray:
    """Lose detail by the down-sampling rate, keep the size (below 1.1 the image passes, as in A1111)."""
    if s.a < 1.1:
        return img
    height, width = img.shape[:2]
    small = cv2.resize(img, (max(1, int(width / s.a)), max(1, int(height / s.a))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _blur_gaussian(img: np.ndarray, s: _Settings) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), s.a)


def _color_grid(img: np.ndarray, s: _Settings) -> np.ndarray:
    """The T2I-Adapter colour palette: the mean colour of each 64x64 cell, as flat blocks."""
    height, width = img.shape[:2]
    cells = cv2.resize(img, (max(1, width // 64), max(1, height // 64)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)


DEPTH_NEEDS_MODEL = (
    "depth needs an estimator: pass model=PATH to a local depth-estimation folder (e.g. DPT / Depth Anything), "
    "or supply your own depth map with preprocessor none"
)


@functools.lru_cache(maxsize=2)
def _depth_estimator(folder: str, allow_pickle: bool) -> tuple[Any, Any]:
    """Image processor and model of a transformers depth-estimation folder, kept for the next map."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from ssdxl.models.loading import from_pretrained

    try:
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        model = from_pretrained(AutoModelForDepthEstimation, Path(folder), torch.float32, allow_pickle)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"depth: {folder} is not a usable depth-estimation folder ({first_line(exc)})") from None
    return processor, model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def _depth(img: np.ndarray, s: _Settings) -> np.ndarray:
    """Relative depth, near = white as depth ControlNets expect; ZoeDepth's metric depth is flipped to match."""
    import torch

    assert s.model is not None  # check_preprocessor refuses depth without one
    processor, model = _depth_estimator(str(s.model), s.allow_pickle)
    inputs = processor(images=img, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        predicted = model(**inputs).predicted_depth
    depth = torch.nn.functional.interpolate(predicted[:, None].float(), size=img.shape[:2], mode="bicubic")
    depth = depth[0, 0].cpu().numpy()
    if model.config.model_type == "zoedepth":
        depth = -depth
    low, high = float(depth.min()), float(depth.max())
    if high <= low:
        return np.zeros(img.shape[:2], np.uint8)
    return np.rint((depth - low) / (high - low) * 255).astype(np.uint8)


PREPROCESSORS: tuple[Preprocessor, ...] = (
    Preprocessor("none", "the image as it is: a control map you made", _identity, uses_resolution=False),
    Preprocessor(
        "invert",
        "255 - image: black lines on white become the white-on-black a ControlNet expects",
        _invert,
        label="invert (from white bg & black line)",
        uses_resolution=False,
    ),
    Preprocessor(
        "canny",
        "Canny edges",
        _canny,
        slider_a=Slider("Low Threshold", 1, 255, 100),
        slider_b=Slider("High Threshold", 1, 255, 200),
    ),
    Preprocessor(
        "threshold",
        "white where the image is brighter than the level (0 = Otsu's automatic level)",
        _threshold,
        aliases=("binary",),
        slider_a=Slider("Binarization Threshold", 0, 255, 127),
    ),
    Preprocessor(
        "scribble_xdog",
        "XDoG strokes: thin white lines where the image has dark lines",
        _scribble_xdog,
        slider_a=Slider("XDoG Threshold", 1, 64, 32),
    ),
    Preprocessor(
        "scribble",
        "thick, rounded XDoG strokes, like a hand-drawn scribble (weight-free stand-in for scribble_hed)",
        _scribble,
        slider_a=Slider("XDoG Threshold", 1, 64, 32),
    ),
    Preprocessor(
        "softedge_gradient",
        "soft edges from multi-scale gradients: a weight-free approximation of HED / PiDiNet soft edges",
        _softedge_gradient,
        aliases=("softedge",),
    ),
    Preprocessor(
        "lineart_standard",
        "white strokes where the image is darker than its blurred surroundings",
        _lineart_standard,
        label="lineart_standard (from white bg & black line)",
        slider_a=Slider("Intensity", 1, 255, 127),
    ),
    Preprocessor("shuffle", "content shuffle along a random flow (seeded)", _shuffle),
    Preprocessor(
        "tile_resample",
        "the image with detail removed by down-sampling, at its own size",
        _tile_resample,
        slider_a=Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01),
        uses_resolution=False,
    ),
    Preprocessor("blur_gaussian", "Gaussian blur", _blur_gaussian, slider_a=Slider("Sigma", 0.01, 64.0, 9.0, 0.01)),
    Preprocessor("color", "T2I-Adapter colour grid: 64 px blocks of mean colour", _color_grid, label="t2ia_color_grid"),
    Preprocessor(
        "depth",
        "depth from a local transformers depth-estimation folder (model=PATH)",
        _depth,
        label="depth_midas",
        aliases=("depth_anything", "depth_anything_v2", "depth_zoe"),
    ),
)

# Detectors that need weights ssdxl does not ship (names and A1111 labels), keyed by the weight-free
# module closest to each group.
NEEDS_WEIGHTS: dict[str | None, str] = {
    "softedge_gradient": "hed softedge_hed hed_safe softedge_hedsafe pidinet softedge_pidinet pidinet_safe "
    "softedge_pidisafe te_hed softedge_teed",
    "scribble": "scribble_hed fake_scribble pidinet_scribble scribble_pidinet",
    "lineart_standard": "lineart lineart_realistic lineart_coarse lineart_anime lineart_anime_denoise "
    "pidinet_sketch t2ia_sketch_pidi",
    None: "openpose pose openpose_full openpose_hand openpose_face openpose_faceonly dw_openpose_full "
    "animal_openpose densepose densepose_parula mediapipe_face mlsd normal normal_map normal_midas normal_bae "
    "normal_dsine seg segmentation seg_ufade20k oneformer_coco seg_ofcoco oneformer_ade20k seg_ofade20k "
    "anime_face_segment seg_anime_face depth_leres depth_leres++ depth_hand_refiner",
}

_BY_NAME = {n.lower(): p for p in PREPROCESSORS for n in p.names}
_WEIGHTED = {n: alternative for alternative, names in NEEDS_WEIGHTS.items() for n in names.split()}


def preprocessor_names() -> list[str]:
    """The canonical module names (aliases and A1111 labels are accepted too)."""
    return [p.name for p in PREPROCESSORS]


def get_preprocessor(name: str) -> Preprocessor:
    """The module a name, A1111 label or alias stands for (case-insensitive), else a UserError that says why."""
    key = name.strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key in _WEIGHTED:
        alternative = _WEIGHTED[key]
        hint = f", or use the weight-free {alternative}" if alternative else ""
        raise UserError(
            f"preprocessor {name!r} needs detector weights ssdxl does not ship: make the map elsewhere and "
            f"supply it with preprocessor none{hint}"
        )
    raise UserError(f"unknown preprocessor {name!r}; choose one of: {', '.join(preprocessor_names())}")


def _slider_value(module: Preprocessor, slider: Slider | None, value: float | None, which: str) -> float:
    """The value a slider runs with: its default when unset, else the value if in range."""
    if slider is None:
        return 0.0  # sd-webui-controlnet ignores thresholds a module has no slider for; so do we
    if value is None or value == UNSET:
        return float(slider.value)
    if not slider.minimum <= value <= slider.maximum:
        raise UserError(
            f"{module.name}: {which} ({slider.label}) must be between {slider.minimum:g} and {slider.maximum:g}, "
            f"got {value:g}"
        )
    return float(value)


def _resolution(module: Preprocessor, resolution: int | None) -> int | None:
    """The short side to scale to, or None to keep the input size."""
    if not module.uses_resolution or not resolution:
        return None
    if resolution == UNSET:
        return int(RESOLUTION.value)
    if not RESOLUTION.minimum <= resolution <= RESOLUTION.maximum:
        raise UserError(
            f"{module.name}: resolution must be between {RESOLUTION.minimum:g} and {RESOLUTION.maximum:g} "
            f"(0 keeps the input size), got {resolution}"
        )
    return resolution


def _plan(
    name: str,
    resolution: int | None,
    threshold_a: float | None,
    threshold_b: float | None,
    model: str | Path | None,
    seed: int,
    allow_pickle: bool,
) -> tuple[Preprocessor, int | None, _Settings]:
    """The module, the short side to scale to (None: keep the size) and its settings, or a UserError."""
    module = get_preprocessor(name)
    if module.takes_model:
        if model is None or str(model) == "":
            raise UserError(DEPTH_NEEDS_MODEL)
        if not (Path(model) / "config.json").is_file():
            raise UserError(f"depth: {model} is not a depth-estimation folder (no config.json)")
    elif model is not None:
        raise UserError(f"{module.name} takes no model; only depth runs an estimator")
    if seed < 0:
        raise UserError(f"seed must be 0 or more, got {seed}")
    settings = _Settings(
        a=_slider_value(module, module.slider_a, threshold_a, "threshold_a"),
        b=_slider_value(module, module.slider_b, threshold_b, "threshold_b"),
        seed=seed,
        model=Path(model) if model is not None else None,
        allow_pickle=allow_pickle,
    )
    return module, _resolution(module, resolution), settings


def check_preprocessor(
    name: str,
    *,
    resolution: int | None = 512,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    model: str | Path | None = None,
) -> str:
    """Everything about a preprocessing request that can be wrong before an image is touched, so a
    server can refuse it when the request arrives. Returns the canonical module name."""
    return _plan(name, resolution, threshold_a, threshold_b, model, 0, False)[0].name


def map_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) of a map whose short side is ``resolution``: aspect kept, sides multiples of 8."""
    scale = resolution / min(width, height)
    map_width, map_height = (max(8, round(side * scale / 8) * 8) for side in (width, height))
    if max(map_width, map_height) > MAX_SIDE:
        raise UserError(
            f"a {width}x{height} image at resolution {resolution} would make a {map_width}x{map_height} map; "
            f"crop it or lower the resolution (longest side {MAX_SIDE})"
        )
    return map_width, map_height


def _rgb_array(image: Image.Image) -> np.ndarray:
    """RGB uint8; transparency is laid over white, as in sd-webui-controlnet, so transparent line art reads."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def preprocess(
    name: str,
    image: Image.Image,
    *,
    resolution: int | None = 512,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    model: str | Path | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
) -> Image.Image:
    """Turn a picture into the control map module ``name`` makes (an RGB image).

    Thresholds are the module's sliders (see ``module_detail``); None or -1 means the slider default.
    ``seed`` drives ``shuffle``; ``model`` and ``allow_pickle`` are for ``depth``.
    """
    module, short_side, settings = _plan(name, resolution, threshold_a, threshold_b, model, seed, allow_pickle)
    img = _rgb_array(image)
    if short_side is not None:
        height, width = img.shape[:2]
        size = map_size(width, height, short_side)
        if size != (width, height):
            upscaling = size[0] > width
            img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC if upscaling else cv2.INTER_AREA)
    result = module.run(img, settings)
    if result.ndim == 2:
        result = cv2.cvtColor(result, cv2.COLOR_GRAY2RGB)
    return Image.fromarray(np.ascontiguousarray(result), "RGB")


def module_list(alias_names: bool = False) -> list[str]:
    """``module_list`` of sd-webui-controlnet's ``/controlnet/module_list``: keys, or UI labels when asked."""
    return [(p.label or p.name) if alias_names else p.name for p in PREPROCESSORS]


def module_detail(alias_names: bool = False) -> dict[str, dict[str, Any]]:
    """``module_detail`` of ``/controlnet/module_list``: each module's sliders in API form. ``model_free``
    is A1111's "runs without a ControlNet model", false for every map-making module."""
    return {
        name: {"model_free": False, "sliders": [s.api_json() for s in p.sliders]}
        for name, p in zip(module_list(alias_names), PREPROCESSORS, strict=True)
    }
