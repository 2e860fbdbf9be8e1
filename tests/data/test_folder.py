from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ssdxl.data.folder import ImageCaptionFolder
from ssdxl.errors import UserError


def _write(folder: Path, stem: str, caption: str | None, size: tuple[int, int] = (40, 24), suffix: str = ".png"):
    Image.new("RGB", size, (200, 10, 10)).save(folder / f"{stem}{suffix}")
    if caption is not None:
        (folder / f"{stem}.txt").write_text(caption + "\n", encoding="utf-8")


def test_reads_pairs_in_name_order(tmp_path: Path) -> None:
    _write(tmp_path, "b", "a blue square", suffix=".jpg")
    _write(tmp_path, "a", "a red circle", size=(16, 32))
    (tmp_path / "notes.txt").write_text("a caption without an image is ignored")
    folder = ImageCaptionFolder(tmp_path)

    assert len(folder) == 2
    first = folder.sample(0)
    assert first.caption == "a red circle"  # stripped of the trailing newline
    assert first.image.mode == "RGB" and first.image.size == (16, 32)
    assert first.path.name == "a.png"
    assert [s.caption for s in folder] == ["a red circle", "a blue square"]
    assert folder[1].caption == "a blue square"


def test_shapes_export_is_a_folder(tmp_path: Path) -> None:
    from ssdxl.data.shapes import ShapesWorld

    world = ShapesWorld(seed=3)
    world.export(tmp_path, 3)
    folder = ImageCaptionFolder(tmp_path)
    assert [s.caption for s in folder] == [world.sample(i).caption for i in range(3)]


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ImageCaptionFolder(tmp_path / "nope")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "only.txt").write_text("no image")
    with pytest.raises(UserError, match="no images"):
        ImageCaptionFolder(tmp_path)


def test_image_without_caption(tmp_path: Path) -> None:
    _write(tmp_path, "ok", "fine")
    _write(tmp_path, "lonely", None)
    with pytest.raises(UserError, match=r"no caption file.*lonely\.txt"):
        ImageCaptionFolder(tmp_path)


def test_unreadable_image(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("x")
    folder = ImageCaptionFolder(tmp_path)
    with pytest.raises(UserError, match="cannot read image"):
        folder.sample(0)
