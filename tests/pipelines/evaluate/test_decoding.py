"""Decoding generated part maps with a known palette."""

from __future__ import annotations

import numpy as np

from pipelines.evaluate.decoding import decode_with_palette


def test_generated_part_maps_decode_to_the_nearest_colour_or_background():
    palette = np.array([[200, 40, 40], [40, 200, 40]], dtype=np.uint8)
    pixels = np.array([[[190, 50, 45], [0, 0, 0], [60, 170, 60], [30, 25, 20], [150, 110, 40]]], dtype=np.uint8)
    assert decode_with_palette(pixels, palette).tolist() == [[0, -1, 1, -1, 0]]
    # With a limit, pipelines.build.colour's exact semantics: far from every colour is unknown.
    assert decode_with_palette(pixels, palette, limit=20.0).tolist() == [[0, -1, -1, -1, -1]]
