from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageFile

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


def _meta(folder: Path, *rows: object) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_metadata_jsonl_lists_the_samples(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    _write(tmp_path / "train", "b", None, size=(16, 32))
    _write(tmp_path, "a", "a .txt caption is ignored when metadata.jsonl exists")
    _write(tmp_path, "unlisted", None)  # not in the metadata: not a sample
    _meta(tmp_path, {"file_name": "train/b.png", "text": " a tall one \n"}, "", {"file_name": "a.png", "text": "wide"})
    folder = ImageCaptionFolder(tmp_path)

    assert len(folder) == 2
    assert [s.caption for s in folder] == ["a tall one", "wide"]  # metadata order, stripped
    assert folder[0].path == tmp_path / "train" / "b.png" and folder[0].image.size == (16, 32)


@pytest.mark.parametrize("column", ["text", "caption", "prompt"])
def test_metadata_caption_column(tmp_path: Path, column: str) -> None:
    _write(tmp_path, "a", None)
    _meta(tmp_path, {"file_name": "a.png", column: "a red square", "other": 1})
    assert ImageCaptionFolder(tmp_path)[0].caption == "a red square"


def test_metadata_first_line_decides_the_column(tmp_path: Path) -> None:
    _write(tmp_path, "a", None)
    _write(tmp_path, "b", None)
    _meta(tmp_path, {"file_name": "a.png", "text": "t", "caption": "c"}, {"file_name": "b.png", "caption": "only c"})
    with pytest.raises(UserError) as exc:
        ImageCaptionFolder(tmp_path)
    assert "line 2 has no 'text' caption" in _one_line(exc)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (({"file_name": "a.png", "text": "ok"}, '{"file_name": "a.png", "text": '), "line 2 is not valid JSON"),
        (({"file_name": "a.png", "text": "ok"}, ["a.png"]), "line 2 is not a JSON object"),
        (({"text": "no file"},), "line 1 has no file_name"),
        (
            ({"file_name": "a.png", "text": "ok"}, "", {"file_name": "gone.png", "text": "x"}),
            "line 3: file_name 'gone.png' does not exist",
        ),
        (({"file_name": "a.png", "label": 3},), r"line 1 has no caption column \(text, caption, prompt\)"),
        (({"file_name": "a.png", "text": None},), "line 1 has no 'text' caption"),
        ((), "lists no images"),
    ],
)
def test_metadata_errors_name_the_line(tmp_path: Path, rows: tuple, match: str) -> None:
    _write(tmp_path, "a", "a .txt caption does not rescue a bad metadata.jsonl")
    _meta(tmp_path, *rows)
    with pytest.raises(UserError, match=match) as exc:
        ImageCaptionFolder(tmp_path)
    assert "metadata.jsonl" in _one_line(exc)


def test_one_caption_for_bare_photos(tmp_path: Path) -> None:
    _write(tmp_path, "dog1", None, suffix=".jpg")
    _write(tmp_path, "dog2", "a .txt beside it is overridden too")
    folder = ImageCaptionFolder(tmp_path, caption="a photo of sks dog")
    assert [s.caption for s in folder] == ["a photo of sks dog"] * 2
    with pytest.raises(UserError, match="no caption file"):
        ImageCaptionFolder(tmp_path)


def test_one_caption_overrides_metadata(tmp_path: Path) -> None:
    _write(tmp_path, "a", None)
    _meta(tmp_path, {"file_name": "a.png"})  # no caption column needed
    assert ImageCaptionFolder(tmp_path, caption="sks")[0].caption == "sks"


def test_empty_folder_with_one_caption(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no images \(.*\)$"):
        ImageCaptionFolder(tmp_path, caption="sks")


def test_check_sizes_names_small_images(tmp_path: Path) -> None:
    _write(tmp_path, "big", "x", size=(64, 80))
    _write(tmp_path, "narrow", "x", size=(30, 200))
    _write(tmp_path, "tiny", "x", size=(8, 8))
    folder = ImageCaptionFolder(tmp_path)
    folder.check_sizes(lambda size: (8, 8))
    folder.check_sizes(lambda size: (int(size[0] * 1.1), size[1]))  # within the tolerance
    with pytest.raises(UserError) as exc:
        folder.check_sizes(lambda size: (64, 64))
    message = _one_line(exc)
    assert "2 image(s)" in message and "big" not in message
    assert "narrow.png (30x200, trains at 64x64), tiny.png (8x8, trains at 64x64)" in message


def test_check_sizes_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "a", "x", size=(64, 64), suffix=".jpg")
    _write(tmp_path, "b", "x", size=(64, 64))
    folder = ImageCaptionFolder(tmp_path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded pixels"))
    folder.check_sizes(lambda size: (64, 64))
    with pytest.raises(pytest.fail.Exception):  # the trap works: a sample does decode
        folder.sample(0)


def test_check_sizes_unreadable_image(tmp_path: Path) -> None:
    _write(tmp_path, "a", "x", size=(64, 64))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("x")
    with pytest.raises(UserError, match=r"cannot read image .*broken\.png") as exc:
        ImageCaptionFolder(tmp_path).check_sizes(lambda size: (1, 1))
    _one_line(exc)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A phone photo stored landscape with 'rotate 90' in EXIF trains (and is size-checked) as portrait."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.new("RGB", (40, 24), (200, 10, 10)).save(tmp_path / "phone.jpg", exif=exif)
    folder = ImageCaptionFolder(tmp_path, caption="x")
    assert folder.image_size(0) == (24, 40)
    assert folder[0].image.size == (24, 40)
