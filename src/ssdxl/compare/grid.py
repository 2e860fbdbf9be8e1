"""The labelled grid picture: row labels on the left, column labels on top, one box per cell.

Every box has the size of the largest cell (times ``zoom``, nearest-neighbour, for small models);
smaller cells are centred in it on grey (letterboxed). Labels use PIL's default font and wrap to
their space, so the grid is exactly ``left + columns x box`` by ``top + rows x box``.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

PAD = 4
ROW_LABEL_WIDTH = 160  # row labels wrap beyond this many pixels
MAX_LINES = 3  # a label longer than this many lines ends in "..."
BACKGROUND, LETTERBOX, INK = (255, 255, 255), (128, 128, 128), (0, 0, 0)


Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font() -> Font:
    return ImageFont.load_default()


def _line_height(font: Font) -> int:
    return font.getbbox("Ag")[3] + 2


def wrap(text: str, width: int, font: Font | None = None) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (words broken where one alone is wider), at most
    ``MAX_LINES``."""
    font = font or _font()
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while len(word) > 1 and font.getlength(word) > width:  # break an over-long word
            cut = next((i for i in range(len(word) - 1, 0, -1) if font.getlength(word[:i]) <= width), 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
        while lines[-1] and font.getlength(lines[-1] + "...") > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines or [""]


def margins(row_labels: list[str], column_labels: list[str], box_width: int) -> tuple[int, int]:
    """(left, top): the pixels the row labels and the column labels take."""
    font = _font()
    rows = [line for label in row_labels for line in wrap(label, ROW_LABEL_WIDTH, font)]
    left = 2 * PAD + max((round(font.getlength(line)) for line in rows), default=0)
    lines = max((len(wrap(label, box_width - 2 * PAD, font)) for label in column_labels), default=0)
    return left, 2 * PAD + lines * _line_height(font)


def labelled_grid(
    cells: list[list[Image.Image]], row_labels: list[str], column_labels: list[str], zoom: int = 1
) -> Image.Image:
    """``cells[row][column]`` in one picture with its labels."""
    box_w = zoom * max(image.width for row in cells for image in row)
    box_h = zoom * max(image.height for row in cells for image in row)
    left, top = margins(row_labels, column_labels, box_w)
    grid = Image.new("RGB", (left + len(column_labels) * box_w, top + len(row_labels) * box_h), BACKGROUND)
    draw, font, line_h = ImageDraw.Draw(grid), _font(), _line_height(_font())
    for c, label in enumerate(column_labels):
        lines = wrap(label, box_w - 2 * PAD, font)
        for k, line in enumerate(lines):
            x = left + c * box_w + (box_w - font.getlength(line)) / 2
            draw.text((x, top - PAD - (len(lines) - k) * line_h), line, fill=INK, font=font)
    for r, (label, row) in enumerate(zip(row_labels, cells, strict=True)):
        lines = wrap(label, ROW_LABEL_WIDTH, font)
        y = top + r * box_h + (box_h - len(lines) * line_h) / 2
        for k, line in enumerate(lines):
            draw.text((PAD, y + k * line_h), line, fill=INK, font=font)
        for c, image in enumerate(row):
            x0, y0 = left + c * box_w, top + r * box_h
            shown = image.convert("RGB").resize((image.width * zoom, image.height * zoom), Image.Resampling.NEAREST)
            if shown.size != (box_w, box_h):
                draw.rectangle((x0, y0, x0 + box_w - 1, y0 + box_h - 1), fill=LETTERBOX)
            grid.paste(shown, (x0 + (box_w - shown.width) // 2, y0 + (box_h - shown.height) // 2))
    return grid
