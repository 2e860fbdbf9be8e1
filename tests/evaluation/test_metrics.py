"""Quality metrics: their defining properties on random networks, and parity with the reference libraries.

The parity tests run torchmetrics / torch-fidelity on the same weights and inputs; they skip when
those are not installed. torch-fidelity is installed without its dependencies (it lists
torchvision, which does not import beside this torch), so its import is lent torchvision stand-ins.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ssdxl.errors import UserError
from ssdxl.evaluation.metrics import (
    INCEPTION_STEM,
    INCEPTION_URL,
    METRICS,
    MetricSuite,
    fid_from_features,
    inception_score,
    lpips_file,
    write_random_weights,
)

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a cat", "a house"]


def _noise(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _blocks(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """Flat colour blocks: a different distribution from noise."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.NEAREST)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_weights(tmp_path_factory.mktemp("metric-weights"), METRICS)


@pytest.fixture(scope="module")
def suite(weights: Path) -> MetricSuite:
    return MetricSuite.load(weights, METRICS)


@pytest.fixture(scope="module")
def noise() -> list[Image.Image]:
    return [_noise(i) for i in range(3)]


@pytest.fixture(scope="module")
def blocks() -> list[Image.Image]:
    return [_blocks(i) for i in range(3)]


@pytest.fixture(scope="module")
def inception(suite: MetricSuite, noise: list[Image.Image], blocks: list[Image.Image]) -> tuple[Any, Any]:
    return suite.inception_outputs(noise), suite.inception_outputs(blocks)


def test_fid_is_zero_against_itself_and_positive_against_another_set(inception: tuple[Any, Any]) -> None:
    (noise_features, _), (block_features, _) = inception
    assert noise_features.shape == (3, 2048)
    assert fid_from_features(noise_features, noise_features) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(noise_features, block_features) > 1.0
    with pytest.raises(UserError, match="at least two images"):
        fid_from_features(noise_features[:1], block_features)


def test_inception_score_is_at_least_one_and_one_for_identical_images(inception: tuple[Any, Any]) -> None:
    (_, noise_logits), (_, block_logits) = inception
    logits = torch.cat([noise_logits, block_logits])
    assert logits.shape == (6, 1008)
    assert inception_score(logits) > 1.0 + 1e-6
    assert inception_score(noise_logits[:1].repeat(6, 1)) == pytest.approx(1.0, abs=1e-9)
    assert np.isfinite(inception_score(logits[:1]))  # below the split count: fewer splits, no NaN


@pytest.fixture(scope="module")
def hand_clip(weights: Path, noise: list[Image.Image]) -> np.ndarray:
    """100 * cos(image, prompt) for each noise image and each of PROMPTS, by CLIPModel's own forward."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(weights / "clip"), CLIPProcessor.from_pretrained(weights / "clip")
    with torch.inference_mode():
        out = model(**processor(text=PROMPTS, images=noise, return_tensors="pt", padding=True))
    return (100 * out.image_embeds @ out.text_embeds.T).numpy()


def _pairs(hand_clip: np.ndarray, best: bool) -> tuple[list[str], float]:
    """For each image the prompt the random CLIP ranks highest (or lowest), and the mean score by hand."""
    picks = hand_clip.argmax(axis=1) if best else hand_clip.argmin(axis=1)
    return [PROMPTS[i] for i in picks], float(hand_clip[np.arange(len(picks)), picks].mean())


def test_clip_score_is_torchmetrics_formula_by_hand(
    suite: MetricSuite, hand_clip: np.ndarray, noise: list[Image.Image]
) -> None:
    prompts, hand = _pairs(hand_clip, best=True)
    assert hand > 0
    score = suite.clip_score(noise, prompts)
    assert 0 <= score <= 100
    assert score == pytest.approx(hand, rel=1e-4, abs=1e-4)
    prompts, hand = _pairs(hand_clip, best=False)
    assert hand < 0
    assert suite.clip_score(noise, prompts) == 0.0  # the mean is floored at 0


def test_lpips_is_zero_for_identical_pairs_and_positive_otherwise(
    suite: MetricSuite, noise: list[Image.Image], blocks: list[Image.Image]
) -> None:
    assert suite.lpips_pairs(noise, noise) == pytest.approx(0.0, abs=1e-7)
    assert suite.lpips_pairs(noise, blocks) > 0
    # diversity pairs images that share a prompt: (0, 1) and (2, 3) here
    images, prompts = noise[:2] + blocks[:2], ["a", "a", "b", "b"]
    expected = suite.lpips_pairs([noise[0], blocks[0]], [noise[1], blocks[1]])
    assert suite.lpips_diversity(images, prompts) == pytest.approx(expected, rel=1e-6)
    assert suite.lpips_diversity(noise, ["a", "b", "c"]) is None
    with pytest.raises(UserError, match="one size"):
        suite.lpips_pairs([noise[0]], [_noise(0, (32, 32))])


def test_score_reports_the_loaded_metrics(
    suite: MetricSuite, noise: list[Image.Image], inception: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    (features, logits), _ = inception  # the noise images' real Inception outputs, to spare the network here
    calls = []

    def outputs(images: list[Image.Image]) -> tuple[Any, Any]:
        calls.append(len(images))
        return features[: len(images)], logits[: len(images)]

    monkeypatch.setattr(suite, "inception_outputs", outputs)
    noise, prompts = noise[:2], ["a", "a"]
    alone = suite.score(noise, prompts)
    assert list(alone) == ["is", "clip", "lpips"]  # no reference: no FID, LPIPS is diversity
    against = suite.score(noise, prompts, reference=noise)
    assert list(against) == list(METRICS)
    assert against["fid"] == pytest.approx(0.0, abs=1e-6) and against["lpips"] == pytest.approx(0.0, abs=1e-7)
    assert against["is"] == alone["is"] and against["clip"] == alone["clip"]
    calls.clear()
    assert suite.score(noise, prompts, reference=noise) == against
    assert calls == [2]  # the reference's features were kept from the call before
    assert MetricSuite.load(None, []).score(noise, prompts) == {}
    with pytest.raises(UserError, match="prompts"):
        suite.score(noise, prompts[:1])


def test_missing_weights_name_each_file_and_where_it_comes_from(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        MetricSuite.load(tmp_path, METRICS)
    message = str(error.value)
    assert "\n" not in message
    for needed in (f"{INCEPTION_STEM}.safetensors", INCEPTION_URL, "clip/", "openai/clip-vit-large-patch14"):
        assert needed in message
    assert lpips_file("alex") in message and "alexnet-owt-7be5be79.pth" in message
    with pytest.raises(UserError) as error:
        MetricSuite.load(tmp_path, ["lpips"], lpips_net="vgg")
    assert lpips_file("vgg") in str(error.value) and "clip" not in str(error.value)
    with pytest.raises(UserError, match="--metrics-weights"):
        MetricSuite.load(None, ["clip"])
    with pytest.raises(UserError, match="unknown metric"):
        MetricSuite.load(tmp_path, ["kid"])


def test_a_file_without_the_expected_tensors_is_refused(weights: Path, tmp_path: Path) -> None:
    state = load_file(str(weights / lpips_file("alex")))
    save_file({k: v for k, v in state.items() if not k.startswith("lin")}, str(tmp_path / lpips_file("alex")))
    with pytest.raises(UserError, match="lin0.model.1.weight"):
        MetricSuite.load(tmp_path, ["lpips"])


def test_pickled_inception_needs_allow_pickle(weights: Path, tmp_path: Path, suite: MetricSuite) -> None:
    torch.save(load_file(str(weights / f"{INCEPTION_STEM}.safetensors")), tmp_path / f"{INCEPTION_STEM}.pth")
    with pytest.raises(UserError, match="refusing to load .*allow-pickle"):
        MetricSuite.load(tmp_path, ["is"])
    pickled = MetricSuite.load(tmp_path, ["is"], allow_pickle=True).inception.state_dict()  # type: ignore[union-attr]
    for key, value in suite.inception.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(pickled[key], value), key


# ---------------------------------------------------------------- parity with the reference implementations


def _import_torch_fidelity() -> None:
    """``import torch_fidelity`` with torchvision stand-ins lent for the import only, where torchvision is absent."""
    if importlib.util.find_spec("torchvision") is not None:
        importlib.import_module("torch_fidelity")
        return
    names = ["torchvision", "torchvision.datasets", "torchvision.models", "torchvision.transforms"]
    stand_ins = {name: types.ModuleType(name) for name in [*names, "torchvision.transforms.functional"]}
    for name, module in stand_ins.items():
        module.__path__ = []  # type: ignore[attr-defined]
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(stand_ins[parent], child, module)
    for dataset in ("CIFAR10", "CIFAR100", "STL10"):  # subclassed at import time
        setattr(stand_ins["torchvision.datasets"], dataset, type(dataset, (), {}))
    sys.modules.update(stand_ins)
    try:
        importlib.import_module("torch_fidelity")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def _reference(module: str) -> Any:
    """A torchmetrics / torch-fidelity module, or a skip saying which package is missing."""
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        install = {"torchmetrics": "torchmetrics", "torch_fidelity": "--no-deps torch-fidelity==0.4.0"}[top]
        pytest.skip(f"{top} is not installed (pip install {install}): no parity check against it")
    if importlib.util.find_spec("torch_fidelity") is not None and "torch_fidelity" not in sys.modules:
        _import_torch_fidelity()  # torchmetrics imports it when it is installed
    return importlib.import_module(module)


def test_inception_matches_torch_fidelity(weights: Path, tmp_path: Path, suite: MetricSuite) -> None:
    inception = _reference("torch_fidelity.feature_extractor_inceptionv3")
    torch.save(load_file(str(weights / f"{INCEPTION_STEM}.safetensors")), tmp_path / "inception.pth")
    layers = ["2048", "logits_unbiased"]
    reference = inception.FeatureExtractorInceptionV3("inception-v3-compat", layers, str(tmp_path / "inception.pth"))
    images = [_noise(7, (56, 40)), _blocks(8, (56, 40))]
    batch = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images])
    with torch.inference_mode():
        expected_features, expected_logits = reference(batch)
    features, logits = suite.inception_outputs(images)
    np.testing.assert_allclose(features, expected_features.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), expected_logits.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchmetrics: features kept in memory; no std of one split
def test_inception_score_matches_torchmetrics() -> None:
    logits = torch.randn(50, 1008, generator=torch.Generator().manual_seed(0)) * 3
    metric = _reference("torchmetrics.image.inception").InceptionScore(feature=torch.nn.Identity(), splits=1)
    metric.update(logits)  # one split: torchmetrics' unseeded shuffle cannot matter
    assert inception_score(logits, splits=1) == pytest.approx(float(metric.compute()[0]), rel=1e-5)


def test_inception_score_matches_torch_fidelity() -> None:
    logits = torch.randn(50, 1008, generator=torch.Generator().manual_seed(0)) * 3
    isc = _reference("torch_fidelity.metric_isc")
    expected = isc.isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)["inception_score_mean"]
    assert inception_score(logits) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("n", "d"), [(20, 64), (200, 16)])
def test_fid_formula_matches_torchmetrics(n: int, d: int) -> None:
    fid_module = _reference("torchmetrics.image.fid")
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n + 5, d)) * np.linspace(0.5, 2.0, d) + 0.3
    features = torch.nn.Identity()
    features.num_features = d  # type: ignore[assignment]
    metric = fid_module.FrechetInceptionDistance(feature=features)
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert fid_from_features(b, a) == pytest.approx(float(metric.compute()), rel=1e-6)


class _TensorFeatures(torch.nn.Module):
    """torchmetrics 1.9 reads ``get_*_features`` as tensors; transformers 5 returns model outputs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model.get_image_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model.get_text_features(*args, **kwargs)
        return getattr(out, "pooler_output", out)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchmetrics: the long caption is cut
def test_clip_score_matches_torchmetrics(suite: MetricSuite, hand_clip: np.ndarray, noise: list[Image.Image]) -> None:
    clip_module = _reference("torchmetrics.multimodal.clip_score")
    model, processor = suite.clip  # type: ignore[misc]
    long_prompt = " ".join(["a very long caption"] * 30)  # past the 77-token context: cut as torchmetrics cuts it
    # images the random CLIP scores above 0 against it, so the check below does not compare two zeros
    liked = [img for img in map(_noise, range(10, 18)) if suite.clip_score([img], [long_prompt]) > 0]
    assert liked
    for images, prompts in ((noise, _pairs(hand_clip, best=True)[0]), (liked, [long_prompt] * len(liked))):
        metric = clip_module.CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), processor))
        with torch.inference_mode():
            metric.update([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images], prompts)
            expected = float(metric.compute())
        assert expected > 0
        assert suite.clip_score(images, prompts) == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_torchmetrics(net: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lpips_module = _reference("torchmetrics.functional.image.lpips")
    write_random_weights(tmp_path, ["lpips"], seed=3, lpips_net=net)
    # torchmetrics' real lin layers (shipped in its wheel) over our random backbone, in our file layout
    state = load_file(str(tmp_path / lpips_file(net)))
    lins = Path(lpips_module.__file__).parent / "lpips_models" / f"{net}.pth"
    state.update(torch.load(lins, map_location="cpu", weights_only=True))
    save_file(state, str(tmp_path / lpips_file(net)))
    ours = MetricSuite.load(tmp_path, ["lpips"], lpips_net=net)
    # torchmetrics takes torchvision's ``features``: hand it the same backbone instead
    monkeypatch.setattr(lpips_module, "_get_tv_model_features", lambda *_args, **_kwargs: ours.lpips.features)  # type: ignore[union-attr]
    reference = lpips_module._NoTrainLpips(net=net, pnet_rand=True)
    a = [_noise(i, (40, 40)) for i in range(2)]
    b = [_blocks(i, (40, 40)) for i in range(2)]

    def floats(images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img in images]) / 255

    with torch.inference_mode():
        expected = lpips_module._lpips_compute(lpips_module._lpips_update(floats(a), floats(b), reference, True))
    assert ours.lpips_pairs(a, b) == pytest.approx(float(expected), rel=1e-4)
