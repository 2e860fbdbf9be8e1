"""The weight-free control-map preprocessors: what each map shows, the A1111 resolution and slider
semantics, the depth estimator from a local folder, and ``ssdxl preprocess``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ssdxl.control.preprocess import (
    check_preprocessor,
    map_size,
    module_detail,
    module_list,
    preprocess,
    preprocessor_names,
)
from ssdxl.errors import UserError


def square(value: int = 255, size: int = 64, lo: int = 16, hi: int = 48) -> tuple[Image.Image, np.ndarray]:
    """A filled square of grey ``value`` on black, and its mask."""
    mask = np.zeros((size, size), bool)
    mask[lo:hi, lo:hi] = True
    return Image.fromarray(np.where(mask[..., None], value, 0).astype(np.uint8).repeat(3, axis=2)), mask


def gray(image: Image.Image) -> np.ndarray:
    """The map's single channel, after checking it is an RGB image with equal channels."""
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert (array == array[..., :1]).all()
    return array[..., 0]


def ring(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within ``width`` of the mask's outline, on either side."""
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    m = mask.astype(np.uint8)
    return cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)


def test_canny_edges_follow_the_outline_of_a_square():
    image, mask = square()
    edges = gray(preprocess("canny", image, resolution=None)) > 0
    assert edges.any() and not (edges & ~ring(mask)).any()  # on the outline: none inside or outside
    for side in (edges[14:18, 16:48], edges[46:50, 16:48], edges[16:48, 14:18], edges[16:48, 46:50]):
        assert side.any(axis=0 if side.shape[1] > side.shape[0] else 1).mean() > 0.9  # every side, all along


def test_canny_thresholds_decide_which_edges_count():
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, :16] = 40  # a faint step: its gradient (Sobel 4 x 40) is under the default high threshold
    image = Image.fromarray(half)
    assert not gray(preprocess("canny", image, resolution=None)).any()
    assert gray(preprocess("canny", image, resolution=None, threshold_a=10, threshold_b=30)).any()
    assert preprocess("canny", image, resolution=None, threshold_a=-1) == preprocess("canny", image, resolution=None)


def test_out_of_range_sliders_name_the_slider_and_its_range():
    image, _ = square()
    with pytest.raises(UserError, match=r"canny: threshold_b \(High Threshold\) must be between 1 and 255"):
        preprocess("canny", image, threshold_b=300)
    with pytest.raises(UserError, match=r"Sigma\) must be between 0.01 and 64"):
        check_preprocessor("blur_gaussian", threshold_a=0)
    with pytest.raises(UserError, match="resolution must be between 64 and 2048"):
        check_preprocessor("canny", resolution=32)
    check_preprocessor("none", threshold_a=1e9)  # a slider the module lacks is ignored, as in A1111


def test_invert_and_transparency_over_white():
    image, mask = square()
    inverted = preprocess("invert (from white bg & black line)", image)  # no resolution slider: keeps the size
    assert inverted.size == image.size and (gray(inverted) == np.where(mask, 0, 255)).all()
    clear = Image.new("RGBA", (16, 8), (0, 0, 0, 0))  # transparent black reads as white paper
    assert not gray(preprocess("invert", clear)).any()


def test_threshold_binarises_at_the_level_and_otsu_finds_it():
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    out = gray(preprocess("threshold", ramp, resolution=None, threshold_a=100))
    assert set(np.unique(out)) == {0, 255} and (out[0] == np.where(np.arange(256) > 100, 255, 0)).all()
    rng = np.random.default_rng(0)
    two_tones = np.where(rng.random((32, 32)) < 0.5, 60, 190) + rng.integers(-20, 20, (32, 32))
    otsu = gray(preprocess("binary", Image.fromarray(two_tones.astype(np.uint8)), resolution=None, threshold_a=0))
    assert (otsu == np.where(two_tones > 125, 255, 0)).all()


def test_resolution_sets_the_short_side_keeps_aspect_and_multiples_of_8():
    assert preprocess("canny", Image.new("RGB", (300, 200))).size == (768, 512)
    width, height = preprocess("canny", Image.new("RGB", (200, 333)), resolution=256).size
    assert width == 256 and height % 8 == 0 and abs(height / width - 333 / 200) < 0.02
    assert map_size(1000, 100, 64) == (640, 64)
    odd = Image.new("RGB", (37, 29))
    assert preprocess("canny", odd, resolution=None).size == preprocess("canny", odd, resolution=0).size == (37, 29)
    assert preprocess("canny", odd, resolution=-1).size[1] == 512  # A1111's "unset" is its 512 default
    assert preprocess("tile_resample", odd, resolution=1024).size == (37, 29)  # no resolution slider there
    with pytest.raises(UserError, match="crop it or lower the resolution"):
        map_size(10000, 10, 512)


def test_shuffle_is_deterministic_per_seed():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    first, again, other = (np.asarray(preprocess("shuffle", image, resolution=None, seed=s)) for s in (3, 3, 4))
    assert (first == again).all() and not (first == other).all() and not (first == np.asarray(image)).all()


def test_color_grid_is_constant_on_64_pixel_cells():
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (128, 192, 3), dtype=np.uint8))
    grid = np.asarray(preprocess("t2ia_color_grid", image, resolution=None))
    cells = grid.reshape(2, 64, 3, 64, 3)
    assert (cells == cells[:, :1, :, :1]).all() and len(np.unique(cells[:, 0, :, 0].reshape(-1, 3), axis=0)) > 1


def test_soft_edges_are_bright_on_edges_and_dark_in_flat_areas():
    image, mask = square(size=128, lo=40, hi=88)
    soft = gray(preprocess("softedge", image, resolution=None))
    assert soft[ring(mask)].min() > 150
    assert soft[~ring(mask, 16)].max() == 0  # the widest blur (sigma 4) has faded 4 sigmas away


def test_lineart_and_scribbles_trace_dark_strokes_on_white():
    paper = np.full((64, 64, 3), 255, np.uint8)
    cv2.line(paper, (8, 32), (56, 32), (0, 0, 0), 2)
    stroke = paper[..., 0] == 0
    image = Image.fromarray(paper)
    lineart = gray(preprocess("lineart_standard", image, resolution=None))
    assert lineart[stroke].mean() > 100 and lineart[:16].max() == 0 and lineart[48:].max() == 0
    faint = gray(preprocess("lineart_standard", image, resolution=None, threshold_a=20))
    assert 0 < faint[stroke].mean() < lineart[stroke].mean()
    thin = gray(preprocess("scribble_xdog", image, resolution=None)) > 0
    thick = gray(preprocess("scribble", image, resolution=None)) > 0
    assert thin[stroke].mean() > 0.9 and not thin[:16].any()
    assert (thick | ~thin).all() and thick.sum() > 1.5 * thin.sum()  # the same strokes, fatter


def test_weight_needing_and_unknown_names_say_what_to_do():
    with pytest.raises(UserError, match="preprocessor none"):
        check_preprocessor("openpose")
    with pytest.raises(UserError, match="weight-free softedge_gradient"):
        check_preprocessor("softedge_hed")
    with pytest.raises(UserError, match="unknown preprocessor 'sharpen'.*canny.*depth"):
        check_preprocessor("sharpen")
    assert check_preprocessor(" SoftEdge ") == "softedge_gradient"
    assert check_preprocessor("binary") == "threshold"
    with pytest.raises(UserError, match="canny takes no model"):
        check_preprocessor("canny", model="somewhere")


def test_module_list_matches_sd_webui_controlnet_shape():
    assert module_list()[0] == "none" and module_list() == preprocessor_names()
    assert "invert (from white bg & black line)" in module_list(alias_names=True)
    detail = module_detail()
    assert detail["canny"] == {
        "model_free": False,
        "sliders": [
            {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
            {"name": "Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
            {"name": "High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
        ],
    }
    assert detail["invert"]["sliders"] == [] and set(module_detail(alias_names=True)) == set(module_list(True))


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random DPT depth estimator with its image processor, saved as safetensors."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        head_hidden_size=8,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dpt")
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def test_depth_runs_a_local_estimator_at_the_map_size(depth_folder):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    depth = gray(preprocess("depth_anything", image, resolution=64, model=depth_folder))
    assert depth.shape == (64, 96) and depth.min() == 0 and depth.max() == 255


def test_depth_needs_a_model_and_refuses_pickles(depth_folder, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    image, _ = square()
    with pytest.raises(UserError, match="depth needs an estimator: pass model=PATH"):
        preprocess("depth", image)
    with pytest.raises(UserError, match="no config.json"):
        check_preprocessor("depth", model=tmp_path)
    pickled = tmp_path / "pickled"
    shutil.copytree(depth_folder, pickled)
    torch.save(load_file(pickled / "model.safetensors"), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(UserError, match="allow-pickle"):
        preprocess("depth", image, model=pickled)


runner = CliRunner()


def test_cli_writes_the_map_and_lists_modules(tmp_path):
    from ssdxl.cli.main import app

    image, _ = square()
    image.save(tmp_path / "in.png")
    out = tmp_path / "maps" / "canny.png"
    result = runner.invoke(app, ["preprocess", "canny", str(tmp_path / "in.png"), "-o", str(out), "--resolution", "0"])
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (64, 64)
    for args in (["preprocess", "--list"], ["preprocess", "list"]):
        listing = runner.invoke(app, args)
        assert listing.exit_code == 0 and "Low Threshold 1-255 [100]" in listing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["canny", "missing.png"], "no such file"),
        (["canny", "bad.png"], "not a readable image"),
        (["nope", "in.png"], "unknown preprocessor"),
        (["canny", "in.png", "--a", "0"], "Low Threshold"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, args, message):
    from ssdxl.cli.main import app

    monkeypatch.chdir(tmp_path)
    square()[0].save("in.png")
    (tmp_path / "bad.png").write_text("not a picture")
    result = runner.invoke(app, ["preprocess", *args, "-o", "out.png"])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out.png").exists()
