"""Generated part maps -> part ids.

Generated colours are never exact, so every pixel takes the nearest of the palette colours and the
black background, however far (``limit=None``); with a ``limit`` it is
:func:`pipelines.build.colour.decode_part_image` (pixels farther than ``limit`` from every palette
colour are unknown, -1).
"""

from __future__ import annotations

import numpy as np

from pipelines.build.colour import BACKGROUND, decode_part_image


def decode_with_palette(images: np.ndarray, palette: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Part ids int16 [..., H, W] of part maps uint8 [..., H, W, 3], decoded with a known palette."""
    if limit is not None:
        return decode_part_image(images, palette, limit=limit)
    with_background = np.vstack([palette, np.zeros((1, 3), np.uint8)])
    ids = decode_part_image(images, with_background, limit=float("inf"))
    ids[ids == len(palette)] = BACKGROUND
    return ids
