"""A folder of images with same-stem ``.txt`` captions: the format training, fine-tuning and
distillation read (``ShapesWorld.export`` writes it too).

``photo1.png`` + ``photo1.txt`` is one sample. Captions are read up front (so a missing one fails
at once, not an hour into a run); images are opened only when a sample is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ssdxl.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class FolderSample:
    """One image (RGB) and its caption, with the file it came from."""

    image: Image.Image
    caption: str
    path: Path


class ImageCaptionFolder:
    """Image files with captions in ``<stem>.txt`` beside them, in file-name order.

    Indexable (``sample(i)``, ``folder[i]``, ``len``) so trainers can shuffle and resume
    exactly, and iterable like the shapes world's stream.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"image folder {str(self.path)!r} does not exist or is not a folder")
        images = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise UserError(
                f"image folder {str(self.path)!r} has no images ({', '.join(IMAGE_SUFFIXES)}) "
                "with same-name .txt captions"
            )
        missing = [p.name for p in images if not p.with_suffix(".txt").is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise UserError(
                f"{len(missing)} image(s) in {str(self.path)!r} have no caption file "
                f"(expected e.g. {Path(missing[0]).stem}.txt): {shown}"
            )
        self.images = images
        self.captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in images]

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> FolderSample:
        path = self.images[index]
        try:
            with Image.open(path) as im:
                image = im.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise UserError(f"cannot read image {str(path)!r}: {exc}") from exc
        return FolderSample(image, self.captions[index], path)

    def __getitem__(self, index: int) -> FolderSample:
        return self.sample(index)

    def __iter__(self) -> Iterator[FolderSample]:
        return map(self.sample, range(len(self)))
