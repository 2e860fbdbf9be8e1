"""A folder of captioned images: the format training, fine-tuning and distillation read
(``ShapesWorld.export`` writes it too).

Three ways to caption, in this order of precedence for the list of samples:

* ``metadata.jsonl`` (Hugging Face "imagefolder"): one ``{"file_name": ..., "text": ...}`` per line,
  the caption column being ``text``, else ``caption``, else ``prompt`` (whichever the first line has);
* otherwise ``photo1.png`` + ``photo1.txt`` beside it is one sample;
* ``caption="a photo of sks dog"`` gives every image that caption (DreamBooth), so no ``.txt`` is needed.

ControlNet training also needs each image's control map (``conditioning=True``): the ``conditioning_image``
column of ``metadata.jsonl`` (a path relative to the folder, as in diffusers' ControlNet datasets), or else a
``conditioning/`` subfolder holding a map under each image's file name.

Captions are read up front (so a missing one fails at once, not an hour into a run); images are
opened only when a sample is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from ssdxl.errors import UserError, first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA = "metadata.jsonl"
CAPTION_COLUMNS = ("text", "caption", "prompt")
CONDITIONING_COLUMN = "conditioning_image"
CONDITIONING_FOLDER = "conditioning"
UPSCALE_TOLERANCE = 1.1  # a 1000 px photo may train at 1024; a 512 px one may not
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the picture a quarter


@dataclass(frozen=True)
class FolderSample:
    """One image (RGB, upright per its EXIF orientation) and its caption, with the file it came from."""

    image: Image.Image
    caption: str
    path: Path


class ImageCaptionFolder:
    """Captioned images from ``metadata.jsonl`` or same-stem ``.txt`` files (file-name order), or one
    caption for all.

    Indexable (``sample(i)``, ``folder[i]``, ``len``) so trainers can shuffle and resume
    exactly, and iterable like the shapes world's stream.
    """

    def __init__(self, path: str | Path, caption: str | None = None, conditioning: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"image folder {str(self.path)!r} does not exist or is not a folder")
        self.conditioning: list[Path] = []  # each image's control map, when asked for
        if (self.path / METADATA).is_file():
            self.images, self.captions, self.conditioning = _read_metadata(self.path, caption, conditioning)
        else:
            self.images, self.captions = _read_pairs(self.path, caption)
            if conditioning:
                self.conditioning = _conditioning_folder(self.path, self.images)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> FolderSample:
        path = self.images[index]
        return FolderSample(_open_upright(path), self.captions[index], path)

    def __getitem__(self, index: int) -> FolderSample:
        return self.sample(index)

    def __iter__(self) -> Iterator[FolderSample]:
        return map(self.sample, range(len(self)))

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) of image ``index`` as ``sample`` will give it, from the file header alone."""
        path = self.images[index]
        try:
            with Image.open(path) as im:
                return _upright_size(im)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"cannot read image {str(path)!r}: {first_line(exc)}") from exc

    def check_sizes(self, target: Callable[[tuple[int, int]], tuple[int, int]]) -> None:
        """Fail before training if an image must be upscaled by more than ``UPSCALE_TOLERANCE`` to cover the
        (W, H) ``target`` gives for its size (upscaled photos train blur); ``--allow-upscale`` skips this.

        Reads headers only, so it is quick even for thousands of photos; an unreadable file fails here too.
        """
        small = []
        for index, path in enumerate(self.images):
            w, h = self.image_size(index)
            tw, th = target((w, h))
            if max(tw / w, th / h) > UPSCALE_TOLERANCE:
                small.append(f"{path.relative_to(self.path)} ({w}x{h}, trains at {tw}x{th})")
        if small:
            shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
            raise UserError(
                f"{len(small)} image(s) in {str(self.path)!r} are smaller than the training resolution: {shown}; "
                "remove them, use larger originals, lower --resolution or pass --allow-upscale"
            )


class ConditioningImages:
    """A folder's control maps as a source of their own: sample ``i`` is image ``i``'s map, stretched to that
    image's size, so one bucket stream's crops and flips cut an image and its map alike."""

    def __init__(self, folder: ImageCaptionFolder) -> None:
        if not folder.conditioning:
            raise ValueError("the folder was read without its conditioning images")
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def sample(self, index: int) -> FolderSample:
        path = self.folder.conditioning[index]
        image = _open_upright(path)
        size = self.folder.image_size(index)
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        return FolderSample(image, self.folder.captions[index], path)


def _open_upright(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, turned upright per its EXIF orientation; unreadable -> one-line error."""
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {str(path)!r}: {first_line(exc)}") from exc


def _conditioning_folder(folder: Path, images: list[Path]) -> list[Path]:
    """Each image's map under its own file name in ``folder/conditioning/`` (the kohya-ss / A1111 habit)."""
    maps = folder / CONDITIONING_FOLDER
    if not maps.is_dir():
        raise UserError(
            f"{str(folder)!r} has no control maps: give {METADATA} a {CONDITIONING_COLUMN!r} column or add a "
            f"{CONDITIONING_FOLDER}/ folder with a map under each image's file name"
        )
    missing = [p.name for p in images if not (maps / p.name).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} image(s) in {str(folder)!r} have no map in {CONDITIONING_FOLDER}/: {shown}")
    return [maps / p.name for p in images]


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """The header size, sides swapped for a quarter-turn EXIF orientation.

    A PNG's EXIF may sit after the pixels, and Pillow would decode the whole image to find it,
    so a PNG counts as upright unless its EXIF came in the header.
    """
    w, h = im.size
    if im.format == "PNG" and "exif" not in im.info:
        return w, h
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def _read_pairs(folder: Path, caption: str | None) -> tuple[list[Path], list[str]]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        wanted = "" if caption is not None else f" with same-name .txt captions (or a {METADATA})"
        raise UserError(f"image folder {str(folder)!r} has no images ({', '.join(IMAGE_SUFFIXES)}){wanted}")
    if caption is not None:
        return images, [caption.strip()] * len(images)
    missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(
            f"{len(missing)} image(s) in {str(folder)!r} have no caption file "
            f"(expected e.g. {Path(missing[0]).stem}.txt): {shown}"
        )
    return images, [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in images]


def _read_metadata(
    folder: Path, caption: str | None, conditioning: bool = False
) -> tuple[list[Path], list[str], list[Path]]:
    """The samples ``metadata.jsonl`` lists, in its order (with their control maps when ``conditioning``);
    any bad line is a one-line error naming it."""
    where = str(folder / METADATA)
    images: list[Path] = []
    captions: list[str] = []
    maps: list[Path] = []
    column: str | None = None
    try:
        lines = (folder / METADATA).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {where!r}: {first_line(exc)}") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where!r} line {number} is not valid JSON: {first_line(exc)}") from exc
        if not isinstance(row, dict):
            raise UserError(f"{where!r} line {number} is not a JSON object")
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where!r} line {number} has no file_name")
        image = folder / name
        if not image.is_file():
            raise UserError(f"{where!r} line {number}: file_name {name!r} does not exist in {str(folder)!r}")
        if caption is None:
            if column is None:  # the first line decides, as in the datasets library
                column = next((c for c in CAPTION_COLUMNS if c in row), None)
                if column is None:
                    raise UserError(
                        f"{where!r} line {number} has no caption column ({', '.join(CAPTION_COLUMNS)})"
                    )
            text = row.get(column)
            if not isinstance(text, str):
                raise UserError(f"{where!r} line {number} has no {column!r} caption (a string)")
        else:
            text = caption
        if conditioning:
            control = row.get(CONDITIONING_COLUMN)
            if not isinstance(control, str) or not control:
                raise UserError(f"{where!r} line {number} has no {CONDITIONING_COLUMN!r} (the control map's file name)")
            if not (folder / control).is_file():
                raise UserError(f"{where!r} line {number}: {CONDITIONING_COLUMN} {control!r} does not exist in "
                                f"{str(folder)!r}")  # fmt: skip
            maps.append(folder / control)
        images.append(image)
        captions.append(text.strip())
    if not images:
        raise UserError(f"{where!r} lists no images")
    return images, captions, maps
