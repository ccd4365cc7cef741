"""The one contact-sheet builder: labelled rows of equal tiles, labelled columns above them.

Used by ``kp20k render`` (a folder's sheet), the build's artifact (one row per sample) and the training
preview (true and generated grids). Tiles are resized with nearest neighbour, so every part-map pixel
stays an exact palette colour.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 12
CHAR_WIDTH = 6  # PIL's default bitmap font


def contact_sheet(
    rows: Sequence[tuple[str, Sequence[np.ndarray]]],
    tile: int | None = None,
    column_labels: Sequence[str] = (),
) -> Image.Image:
    """``rows``: (label, images) each; images uint8 [H, W(, 3|4)].

    Without labels and with ``tile=None`` the sheet is the images pasted at their own size, edge to edge,
    so a pixel of the sheet is a pixel of a frame. A row label takes a left gutter; column labels a
    header line.
    """
    if not rows or not rows[0][1]:
        raise ValueError("a contact sheet needs at least one row with one image")
    first = rows[0][1][0]
    height, width = (tile, tile) if tile else first.shape[:2]
    gutter = max((len(label) for label, _ in rows), default=0) * CHAR_WIDTH + (4 if any(l for l, _ in rows) else 0)
    header = LABEL_HEIGHT if column_labels else 0
    n_columns = max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (gutter + n_columns * width, header + len(rows) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels):
        draw.text((gutter + c * width + 2, 0), label, fill="black")
    for r, (label, images) in enumerate(rows):
        top = header + r * height
        if label:
            draw.text((2, top + height // 2 - LABEL_HEIGHT // 2), label, fill="black")
        for c, image in enumerate(images):
            sheet.paste(_tile(image, width, height), (gutter + c * width, top))
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _tile(frame: np.ndarray, width: int, height: int) -> Image.Image:
    image = Image.fromarray(frame[..., :3] if frame.ndim == 3 else frame).convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.NEAREST)
