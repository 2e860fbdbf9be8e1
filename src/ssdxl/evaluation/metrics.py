"""FID, Inception Score, CLIP score and LPIPS for ``ssdxl compare``, from metric weights kept locally.

There is no model hub here, so each metric's network is read from a folder the user points at
(``--metrics-weights DIR``; layout and sources in docs/compare.md) and a missing file is named,
with where it is normally obtained. The conventions are torch-fidelity's and torchmetrics', so the
numbers stand beside published ones (tests check them against those libraries on the same weights):

- fid: 2048-d pool3 features of torch-fidelity's InceptionV3 (uint8 images, TF1 bilinear resize to
  299), Gaussian fits with the unbiased sample covariance, torchmetrics' ``FrechetInceptionDistance``.
- is: the same network's unbiased 1008-class logits, softmax, 10 splits after torch-fidelity's seeded
  shuffle (``isc_features_to_metric``); the mean over splits.
- clip: torchmetrics' ``CLIPScore``: ``max(mean(100 * cos(image, caption)), 0)`` with a transformers
  CLIP model and processor; captions past the model's context are cut as torchmetrics cuts them.
- lpips: torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` (AlexNet or VGG16), images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ssdxl.errors import UserError, first_line
from ssdxl.evaluation.fid import covariance_factor, gaussian_frechet_distance
from ssdxl.evaluation.metric_networks import LPIPS, InceptionV3, inception_input

METRICS = ("fid", "is", "clip", "lpips")
LPIPS_NETS = ("alex", "vgg")
INCEPTION_STEM = "weights-inception-2015-12-05-6726825d"  # torch-fidelity's file name
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_STEM}.pth"
CLIP_FOLDER = "clip"
IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020  # torch-fidelity's rng_seed
BATCH = 8
# torchvision's ImageNet backbones, whose ``features.*`` LPIPS reads
LPIPS_BACKBONES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def lpips_file(net: str) -> str:
    """The file name LPIPS with backbone ``net`` is read from."""
    return f"lpips_{net}.safetensors"


def _sources(net: str) -> dict[str, str]:
    """Where each needed file normally comes from, for the missing-file message."""
    return {
        "inception": f"torch-fidelity's InceptionV3 for fid and is: {INCEPTION_URL} converted to .safetensors, "
        "or the .pth itself with --allow-pickle",
        "clip": "a CLIP folder: transformers' CLIPModel and CLIPProcessor of openai/clip-vit-large-patch14 "
        "saved there with save_pretrained",
        "lpips": f"torchvision's {LPIPS_BACKBONES[net]} features.* plus the lin layers of lpips/weights/v0.1/{net}.pth "
        "from the lpips package or torchmetrics, in one file",
    }


def _to_uint8(images: Sequence[Image.Image]) -> list[torch.Tensor]:
    """PIL images as (3, H, W) uint8 RGB tensors."""
    return [torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1) for img in images]


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets (n, d) and (m, d): means and unbiased covariances, as torchmetrics fits them."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise UserError(f"FID needs at least two images per set, got {len(a)} and {len(b)}")
    return gaussian_frechet_distance(a.mean(axis=0), covariance_factor(a), b.mean(axis=0), covariance_factor(b))


def inception_score(logits: torch.Tensor, splits: int = IS_SPLITS) -> float:
    """torch-fidelity's Inception Score of (n, classes) logits: the mean of exp(E KL(p(y|x) || p(y))) over splits.

    Fewer than ``2 * splits`` images get fewer splits, each of at least two images: torch-fidelity's
    own split rule would leave empty splits (NaN) below ``splits`` images.
    """
    n = len(logits)
    splits = min(splits, max(1, n // 2))
    logits = logits[np.random.RandomState(IS_SHUFFLE_SEED).permutation(n)].double()
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        chunk = slice(i * n // splits, (i + 1) * n // splits)
        q = p[chunk].mean(dim=0, keepdim=True)
        scores.append((p[chunk] * (log_p[chunk] - q.log())).sum(dim=1).mean().exp().item())
    return float(np.mean(scores))


def _load_state(module: torch.nn.Module, path: Path, allow_pickle: bool, what: str) -> None:
    """Fill ``module`` from ``path``; extra keys (a classifier LPIPS does not use) are ignored."""
    from ssdxl.models.loading import read_state_dict

    state, _ = read_state_dict(path, allow_pickle=allow_pickle)
    expected = [k for k in module.state_dict() if not k.endswith("num_batches_tracked")]
    missing = [k for k in expected if k not in state]
    if missing:
        raise UserError(f"{path} does not hold {what}: {len(missing)} tensors missing, e.g. {missing[0]}")
    try:
        module.load_state_dict({k: state[k] for k in expected}, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{path} does not hold {what}: {first_line(exc)}") from None


@dataclass
class MetricSuite:
    """The loaded metric networks; ``score`` computes whichever metrics were loaded."""

    names: tuple[str, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    inception: InceptionV3 | None = None
    clip: tuple[Any, Any] | None = None  # (transformers CLIPModel, CLIPProcessor)
    lpips: LPIPS | None = None
    # the last reference set and its features: compare scores every model against the same one
    _reference: tuple[list[Image.Image], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls,
        weights_dir: Path | None,
        names: Sequence[str],
        *,
        allow_pickle: bool = False,
        device: str | torch.device = "cpu",
        lpips_net: str = "alex",
    ) -> MetricSuite:
        """The networks ``names`` need, from ``weights_dir``; a UserError names every missing file at once."""
        names = tuple(dict.fromkeys(names))
        for name in names:
            if name not in METRICS:
                raise UserError(f"unknown metric {name!r}: choose from {', '.join(METRICS)}")
        if lpips_net not in LPIPS_NETS:
            raise UserError(f"unknown LPIPS network {lpips_net!r}: choose from {', '.join(LPIPS_NETS)}")
        suite = cls(names=names, device=torch.device(device))
        if not names:
            return suite
        if weights_dir is None:
            listed = ", ".join(names)
            raise UserError(f"metrics {listed} need their networks: pass --metrics-weights DIR (see docs/compare.md)")
        weights_dir = Path(weights_dir).expanduser()
        if not weights_dir.is_dir():
            raise UserError(f"metric weights folder {weights_dir} not found")
        sources = _sources(lpips_net)
        wanted = {
            "inception": ("fid" in names or "is" in names, _inception_path(weights_dir)),
            "clip": ("clip" in names, weights_dir / CLIP_FOLDER),
            "lpips": ("lpips" in names, weights_dir / lpips_file(lpips_net)),
        }
        missing = [
            f"{path.name}{'/' if key == 'clip' else ''} ({sources[key]})"
            for key, (needed, path) in wanted.items()
            if needed and not (path / "config.json" if key == "clip" else path).is_file()
        ]
        if missing:
            raise UserError(f"missing metric weights in {weights_dir}: {'; '.join(missing)} (see docs/compare.md)")
        if wanted["inception"][0]:
            suite.inception = InceptionV3()
            _load_state(suite.inception, wanted["inception"][1], allow_pickle, "torch-fidelity's InceptionV3")
            suite.inception.to(suite.device).eval()
        if wanted["clip"][0]:
            suite.clip = _load_clip(wanted["clip"][1], allow_pickle, suite.device)
        if wanted["lpips"][0]:
            suite.lpips = LPIPS(lpips_net)
            _load_state(suite.lpips, wanted["lpips"][1], allow_pickle, f"LPIPS {lpips_net} (features.* and lin*)")
            suite.lpips.to(suite.device).eval()
        return suite

    def score(
        self, images: list[Image.Image], prompts: list[str], reference: list[Image.Image] | None = None
    ) -> dict[str, float]:
        """Per model: fid (needs reference set, else omitted), is, clip, lpips (mean pairwise vs reference if
        given, else mean pairwise diversity among images). Only the loaded metrics.

        Diversity pairs images that share a prompt (a model's seeds for one prompt); with no prompt
        given twice it is omitted.
        """
        if not images:
            raise UserError("no images to score")
        if len(prompts) != len(images):
            raise UserError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        out: dict[str, float] = {}
        fid_reference = reference if "fid" in self.names else None
        if "is" in self.names or fid_reference is not None:
            features, logits = self.inception_outputs(images)
            if fid_reference is not None:
                out["fid"] = fid_from_features(features, self._reference_features(fid_reference))
            if "is" in self.names:
                out["is"] = inception_score(logits)
        if "clip" in self.names:
            out["clip"] = self.clip_score(images, prompts)
        if "lpips" in self.names:
            if reference is not None:
                value: float | None = self.lpips_pairs(images, reference)
            else:
                value = self.lpips_diversity(images, prompts)
            if value is not None:
                out["lpips"] = value
        return out

    def _reference_features(self, reference: list[Image.Image]) -> np.ndarray:
        """Inception features of the reference set, computed once for as long as the same images come back."""
        cached = self._reference
        if cached is None or [id(img) for img in cached[0]] != [id(img) for img in reference]:
            self._reference = cached = (list(reference), self.inception_outputs(reference)[0])
        return cached[1]

    def _need(self, part: Any, metric: str) -> Any:
        """The loaded network, or a UserError when the suite was loaded without that metric."""
        if part is None:
            raise UserError(f"metric {metric} was not loaded: pass it to MetricSuite.load")
        return part

    @torch.inference_mode()
    def inception_outputs(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, torch.Tensor]:
        """(pool3 features as float64 (n, 2048), unbiased logits (n, 1008)) of the images, any sizes."""
        net: InceptionV3 = self._need(self.inception, "fid/is")
        features, logits = [], []
        tensors = _to_uint8(images)
        for start in range(0, len(tensors), BATCH):
            # resized one by one, so the images of a set may differ in size
            batch = torch.cat([inception_input(t[None].to(self.device)) for t in tensors[start : start + BATCH]])
            f, lg = net(batch)
            features.append(f.double().cpu())
            logits.append(lg.cpu())
        return torch.cat(features).numpy(), torch.cat(logits)

    def fid(self, images: Sequence[Image.Image], reference: Sequence[Image.Image]) -> float:
        """FID of ``images`` against ``reference`` (each at least two images)."""
        return fid_from_features(self.inception_outputs(images)[0], self.inception_outputs(reference)[0])

    @torch.inference_mode()
    def clip_score(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> float:
        """torchmetrics' CLIPScore of images against their prompts: the mean of 100 * cos, floored at 0."""
        model, processor = self._need(self.clip, "clip")
        if len(prompts) != len(images):
            raise UserError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        scores = []
        limit = model.config.text_config.max_position_embeddings
        for start in range(0, len(images), BATCH):
            batch = [img.convert("RGB") for img in images[start : start + BATCH]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            image_emb = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            text = processor(text=list(prompts[start : start + BATCH]), return_tensors="pt", padding=True)
            ids, mask = text["input_ids"][..., :limit], text["attention_mask"][..., :limit]
            pooled = model.text_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).pooler_output
            text_emb = model.text_projection(pooled)
            image_emb = image_emb / image_emb.norm(p=2, dim=-1, keepdim=True)
            text_emb = text_emb / text_emb.norm(p=2, dim=-1, keepdim=True)
            scores.append(100 * (image_emb * text_emb).sum(dim=-1).float().cpu())
        return max(float(torch.cat(scores).mean()), 0.0)

    @torch.inference_mode()
    def lpips_pairs(self, images: Sequence[Image.Image], others: Sequence[Image.Image]) -> float:
        """Mean LPIPS of ``images[i]`` against ``others[i]``, e.g. a reference model's image for one prompt+seed."""
        net: LPIPS = self._need(self.lpips, "lpips")
        if len(images) != len(others) or not images:
            raise UserError(f"LPIPS pairs images one to one: got {len(images)} against {len(others)}")
        a, b = _to_uint8(images), _to_uint8(others)
        for x, y in zip(a, b, strict=True):
            if x.shape != y.shape:
                sizes = f"{x.shape[2]}x{x.shape[1]} against {y.shape[2]}x{y.shape[1]}"
                raise UserError(f"LPIPS compares images of one size: {sizes}")
        distances = []
        for start in range(0, len(a), BATCH):
            # uint8 → [-1, 1], torchmetrics' range for LPIPS without ``normalize``
            left = torch.stack(a[start : start + BATCH]).to(self.device) / 127.5 - 1
            right = torch.stack(b[start : start + BATCH]).to(self.device) / 127.5 - 1
            distances.append(net(left, right).float().cpu())
        return float(torch.cat(distances).mean())

    def lpips_diversity(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> float | None:
        """Mean LPIPS over every pair of images that share a prompt (higher: more varied seeds); None without pairs."""
        if len(prompts) != len(images):
            raise UserError(f"{len(images)} images but {len(prompts)} prompts: give one prompt per image")
        by_prompt: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            by_prompt.setdefault(prompt, []).append(i)
        pairs = [pair for indices in by_prompt.values() for pair in combinations(indices, 2)]
        if not pairs:
            return None
        return self.lpips_pairs([images[i] for i, _ in pairs], [images[j] for _, j in pairs])


def _inception_path(weights_dir: Path) -> Path:
    """The safetensors conversion when present, else torch-fidelity's pickled original if that is there."""
    safe = weights_dir / f"{INCEPTION_STEM}.safetensors"
    pickled = weights_dir / f"{INCEPTION_STEM}.pth"
    return pickled if pickled.is_file() and not safe.is_file() else safe


def _load_clip(folder: Path, allow_pickle: bool, device: torch.device) -> tuple[Any, Any]:
    """transformers' CLIPModel and CLIPProcessor from a save_pretrained folder; pickled weights only when allowed."""
    from transformers import CLIPModel, CLIPProcessor

    from ssdxl.models.loading import from_pretrained

    try:
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        model = from_pretrained(CLIPModel, folder, torch.float32, allow_pickle)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder} is not a usable CLIP folder ({first_line(exc)})") from None
    return model.to(device).eval(), processor


def write_random_weights(weights_dir: Path, names: Sequence[str], seed: int = 0, *, lpips_net: str = "alex") -> Path:
    """Randomly initialised metric networks in the exact file layout load() reads: what tests and docs examples use.

    He-initialised so activations keep their scale through the deep Inception stack (PyTorch's default
    init shrinks them towards zero), and with non-negative LPIPS lin weights as trained ones are.
    """
    from safetensors.torch import save_file

    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if "fid" in names or "is" in names:
            inception = InceptionV3()
            for module in inception.modules():
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.normal_(inception.fc.weight, std=4 / 2048**0.5)
            state = {k: v.contiguous() for k, v in inception.state_dict().items() if "num_batches" not in k}
            save_file(state, str(weights_dir / f"{INCEPTION_STEM}.safetensors"))
        if "lpips" in names:
            lpips = LPIPS(lpips_net)
            for module in lpips.features:
                if isinstance(module, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            for name, param in lpips.named_parameters():
                if name.startswith("lin"):
                    torch.nn.init.uniform_(param, 0.0, 1.0 / param.shape[1])
            state = {k: v.contiguous() for k, v in lpips.state_dict().items()}
            save_file(state, str(weights_dir / lpips_file(lpips_net)))
        if "clip" in names:
            _write_random_clip(weights_dir / CLIP_FOLDER)
    return weights_dir


def _write_random_clip(folder: Path) -> None:
    """A tiny CLIP (real vocabulary and image preprocessing, 32-wide towers) saved as a CLIP folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from ssdxl.models.tokenizers import clip_tokenizer

    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tower, "vocab_size": 49408, "max_position_embeddings": 77},
        vision_config={**tower, "image_size": 224, "patch_size": 32},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=clip_tokenizer()).save_pretrained(folder)
