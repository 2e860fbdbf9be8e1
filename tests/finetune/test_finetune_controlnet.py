"""``ssdxl finetune controlnet``: a ControlNet trained beside a frozen model, on the shapes world's maps or a
folder's conditioning images; written as a diffusers ControlNet folder; exact resume; maps cut like their
images; bad data and settings are one-line errors (exit 2)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import ControlNetModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from ssdxl.cli.main import app
from ssdxl.data.folder import ImageCaptionFolder
from ssdxl.data.shapes import ShapesWorld, control_map, render
from ssdxl.errors import UserError
from ssdxl.finetune import loop
from ssdxl.finetune.config import FinetuneConfig, run_folder
from ssdxl.finetune.data import ControlBatch, training_batches
from ssdxl.finetune.loop import finetune
from ssdxl.models.loading import load_components

runner = CliRunner()
WEIGHTS = "diffusion_pytorch_model.safetensors"


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_folder(folder, scenes, metadata=True, column=True):
    """Scenes as images + layout maps: diffusers' metadata.jsonl layout, or kohya's .txt + conditioning/."""
    (folder / "images").mkdir(parents=True)
    (folder / "conditioning").mkdir()
    rows = []
    for i, scene in enumerate(scenes):
        name = f"{i:05d}.png"
        render(scene).save(folder / ("images" if metadata else ".") / name)
        control_map(scene, "layout").save(folder / "conditioning" / name)
        row = {"file_name": f"images/{name}", "text": scene.caption}
        if column:
            row["conditioning_image"] = f"conditioning/{name}"
        rows.append(json.dumps(row))
        if not metadata:
            (folder / f"{i:05d}.txt").write_text(scene.caption)
    if metadata:
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """Eight scenes of canvases no shapes bucket fits, so bucketing resizes and crops them."""
    world = ShapesWorld(seed=5, sizes=((96, 64), (64, 96), (72, 72)), two_object_fraction=0.5)
    return write_folder(tmp_path_factory.mktemp("hf"), [world.scene(i) for i in range(8)])


def test_shapes_controlnet_is_a_diffusers_folder_and_can_start_another(tmp_path):
    out = tmp_path / "cn-edges"
    common = ("--model", "shapes", "--batch-size", 2, "--mixed-precision", "no", "--threads", 1, "--log-every", 1)
    result = cli("finetune", "controlnet", *common, "--control", "edges", "-o", out, "--steps", 2)
    assert result.exit_code == 0, result.output
    net = ControlNetModel.from_pretrained(out)
    assert net.config.block_out_channels == load_components("shapes").unet.config.block_out_channels
    assert {v.dtype for v in load_file(out / WEIGHTS).values()} == {torch.float16}
    info = json.loads((out / "ssdxl.json").read_text())
    assert info == {"ssdxl.mode": "controlnet", "ssdxl.base_model": "shapes", "ssdxl.control": "edges"}
    losses = [json.loads(line)["loss"] for line in (run_folder(out) / "log.jsonl").open() if '"loss"' in line]
    assert losses and all(math.isfinite(v) for v in losses)

    again = tmp_path / "again"  # a step too small to show in float16: the start is --controlnet-init's weights
    result = cli("finetune", "controlnet", *common, "--controlnet-init", out, "-o", again, "--steps", 1,
                 "--lr", 1e-12)  # fmt: skip
    assert result.exit_code == 0, result.output
    a, b = load_file(out / WEIGHTS), load_file(again / WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_folder_controlnet_resumes_exactly_and_leaves_the_unet_alone(tiny_dir, hf_folder, tmp_path, monkeypatch):
    """On the tiny SDXL (an 8x VAE: a four-stage map encoder), from a diffusers-layout folder, randomly cropped."""
    loaded = []

    def load_and_keep(model):
        loaded.append(load_components(model))
        return loaded[-1]

    monkeypatch.setattr(loop, "load_components", load_and_keep)
    common = {"mode": "controlnet", "model": str(tiny_dir("sdxl-base")), "data": str(hf_folder), "resolution": 64,
              "allow_upscale": True, "crop": "random", "batch_size": 2, "lr": 1e-3, "save_dtype": "float32",
              "checkpoint_every": 2, "log_every": 2, "mixed_precision": "no", "threads": 1}  # fmt: skip
    whole = tmp_path / "whole"
    finetune(FinetuneConfig(out=str(whole), steps=4, **common))
    fresh = load_components(tiny_dir("sdxl-base")).unet.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in loaded[0].unet.state_dict().items())

    part = tmp_path / "part"
    finetune(FinetuneConfig(out=str(part), steps=2, **common))
    resumed = FinetuneConfig.load(run_folder(part))
    resumed.steps = 4
    finetune(resumed, resume=True)
    a, b = load_file(whole / WEIGHTS), load_file(part / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    zero_convs = [v for k, v in a.items() if k.startswith("controlnet_down_blocks.")]
    assert any(v.abs().max() > 0 for v in zero_convs)  # trained away from zero
    assert len(ControlNetModel.from_pretrained(whole).config.conditioning_embedding_out_channels) == 4


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_maps_are_cut_with_their_images(hf_folder, tmp_path):
    """Random crops and flips: in every batch, the map's white is where the image's objects are (to the pixel:
    anti-aliased edges keep the overlap under 1, and any 1 px shift lowers it)."""
    cfg = FinetuneConfig(mode="controlnet", model="shapes", out=str(tmp_path / "o"), data=str(hf_folder),
                         crop="random", flip=0.5, batch_size=2)  # fmt: skip
    batches = training_batches(cfg, load_components("shapes"))
    seen = 0
    for _ in range(8):
        batch = next(batches)
        assert isinstance(batch, ControlBatch) and batch.control.shape == batch.pixels.shape
        assert batch.control.min() >= 0 and batch.control.max() <= 1
        for pixels, control in zip(batch.pixels, batch.control, strict=True):
            corner = pixels[:, 0, 0][:, None, None]  # objects keep a margin: the corner is background
            objects = (pixels - corner).abs().sum(0) > 0.5
            white = control.mean(0) > 0.5
            shifted = [iou(objects, torch.roll(white, shift, (0, 1))) for shift in ((0, 1), (0, -1), (1, 0), (-1, 0))]
            assert iou(objects, white) > max(0.8, *shifted)
            seen += 1
    assert seen >= 16


def test_a_kohya_folder_keeps_its_maps_in_a_conditioning_folder(tmp_path):
    world = ShapesWorld(seed=2)
    folder = write_folder(tmp_path / "kohya", [world.scene(i) for i in range(3)], metadata=False)
    read = ImageCaptionFolder(folder, conditioning=True)
    assert [p.name for p in read.conditioning] == [p.name for p in read.images]
    (folder / "conditioning" / "00001.png").unlink()
    with pytest.raises(UserError, match="no map in conditioning/: 00001.png"):
        ImageCaptionFolder(folder, conditioning=True)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("no-column", (), "has no 'conditioning_image'"),
        ("plain", (), "has no control maps"),
        ("hf", ("--control", "layout"), "--control picks a map of the 'shapes' world"),
        ("shapes", ("--control", "depth"), "--control must be one of layout, edges"),
        ("shapes", ("-o", "cn.safetensors"), "a ControlNet is a diffusers folder"),
        ("shapes", ("--controlnet-init", "nowhere"), "--controlnet-init 'nowhere'"),
    ],
)
def test_bad_data_and_settings_are_one_line_errors(setup, args, message, hf_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    world = ShapesWorld(seed=1)
    data = {"hf": hf_folder, "shapes": "shapes"}
    if setup == "no-column":
        data[setup] = write_folder(tmp_path / setup, [world.scene(0)], column=False)
    if setup == "plain":
        data[setup] = tmp_path / setup
        world.export(data[setup], 2)
    out = () if "-o" in args else ("-o", tmp_path / "cn")
    result = cli("finetune", "controlnet", "--model", "shapes", "--data", data[setup], *out, "--steps", 1, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not list(tmp_path.glob("*.run"))
