"""Spatial colour encoding: palette placement, and exact encode -> decode round trips."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.build.colour import BACKGROUND, DEFAULT_DECODE_LIMIT, decode_part_image, encode_palette, encode_part_image
from schemas.parts import ColourRules

RULES = ColourRules()  # low 40, high 215, min_distance 32, decode_limit 12


def pairwise_and_black_distances(palette: np.ndarray) -> np.ndarray:
    """Every distance between two palette colours, and between each colour and black."""
    colours = np.vstack([palette.astype(np.float64), np.zeros((1, 3))])
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    return dist[np.triu_indices(len(colours), k=1)]


def test_well_separated_centroids_map_linearly_onto_the_range():
    centroids = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.2], [1.2, -0.5, 0.5]])
    palette = encode_palette(centroids, RULES)
    # low + c * (high - low) = 40 + 175 c, rounded; c = 0.2 -> 75; c = 0.5 -> 127.5 -> 128 (round half to
    # even); coordinates outside the cube are clipped onto it first.
    assert palette.dtype == np.uint8
    assert palette.tolist() == [[40, 40, 40], [215, 215, 215], [40, 215, 75], [215, 40, 128]]


@pytest.mark.parametrize("n_parts", [2, 5, 16, 64])
@pytest.mark.parametrize("seed", range(5))
def test_random_palettes_keep_every_colour_apart_inside_the_range(n_parts, seed):
    rng = np.random.default_rng(seed)
    # Clustered centroids, as the parts of one object are: most pairs start far too close.
    centroids = 0.5 + 0.05 * rng.standard_normal((n_parts, 3))
    palette = encode_palette(centroids, RULES)
    assert palette.shape == (n_parts, 3)
    assert palette.min() >= RULES.low and palette.max() <= RULES.high
    assert pairwise_and_black_distances(palette).min() >= RULES.min_distance
    assert len({tuple(c) for c in palette}) == n_parts


def test_the_first_part_keeps_its_spatial_colour_and_later_ones_move_the_least_needed():
    # Both centroids map to (128, 128, 128); the second one has to move at least 32 away.
    palette = encode_palette(np.full((2, 3), 0.5), RULES)
    assert palette[0].tolist() == [128, 128, 128]
    moved = np.linalg.norm(palette[1].astype(float) - 128)
    # The nearest free colour of the grid (spacing 175 / 47 ~ 3.7 per channel) lies within one grid
    # diagonal of the 32-sphere.
    assert 32 <= moved <= 32 + np.sqrt(3) * 3.8


def test_identical_centroids_for_the_largest_part_count_still_separate():
    palette = encode_palette(np.zeros((64, 3)), RULES)
    assert pairwise_and_black_distances(palette).min() >= RULES.min_distance


def test_palette_is_deterministic():
    centroids = np.random.default_rng(3).random((16, 3)) * 0.2 + 0.4
    first = encode_palette(centroids, RULES)
    again = encode_palette(centroids.copy(), ColourRules(**RULES.model_dump()))
    assert np.array_equal(first, again)


def test_colours_keep_away_from_the_black_background():
    rules = ColourRules(low=0, high=255)
    palette = encode_palette(np.zeros((4, 3)), rules)
    # The centroid (0, 0, 0) would be black itself: it must move out to the 32-sphere around black.
    assert np.linalg.norm(palette.astype(float), axis=1).min() >= 32
    assert pairwise_and_black_distances(palette).min() >= 32


def test_impossible_palette_is_a_clear_error():
    # The first colour lands at the centre of a 20-wide range, and every colour of the range lies within
    # 10 * sqrt(3) = 17.3 of it: no room for a second one 32 away.
    rules = ColourRules(low=100, high=120, min_distance=32, decode_limit=12)
    with pytest.raises(ValueError, match="cannot place 16 part colours"):
        encode_palette(np.full((16, 3), 0.5), rules)


@pytest.mark.parametrize(
    "centroids, message",
    [(np.zeros((3, 2)), "shape"), (np.array([[0.1, np.nan, 0.2]]), "NaN"), (np.zeros(3), "shape")],
)
def test_bad_centroids_are_rejected(centroids, message):
    with pytest.raises(ValueError, match=message):
        encode_palette(centroids, RULES)


def test_part_image_uses_palette_colours_and_a_black_background():
    palette = np.array([[40, 90, 200], [215, 40, 40]], dtype=np.uint8)
    ids = np.array([[-1, 0], [1, 0]])
    rgb = encode_part_image(ids, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 2, 3)
    assert rgb.tolist() == [[[0, 0, 0], [40, 90, 200]], [[215, 40, 40], [40, 90, 200]]]


@pytest.mark.parametrize("ids", [np.array([[2]]), np.array([[-2]]), np.array([[0.0]])])
def test_part_ids_outside_the_palette_are_rejected(ids):
    with pytest.raises(ValueError, match="part ids"):
        encode_part_image(ids, np.array([[40, 40, 40], [200, 200, 200]]))


@pytest.mark.parametrize("seed", range(10))
def test_encode_then_decode_gives_back_every_pixel(seed):
    rng = np.random.default_rng(seed)
    n_parts = int(rng.integers(1, 65))
    rules = ColourRules(low=int(rng.integers(0, 60)), high=int(rng.integers(190, 256)))
    palette = encode_palette(rng.random((n_parts, 3)), rules)
    ids = rng.integers(-1, n_parts, size=(3, 2, 17, 23)).astype(np.int16)  # a [V, F, H, W] batch
    decoded = decode_part_image(encode_part_image(ids, palette), palette, limit=rules.decode_limit)
    assert decoded.dtype == np.int16 and decoded.shape == ids.shape
    assert np.array_equal(decoded, ids)


def test_round_trip_of_a_single_pixel_of_each_part_in_a_large_image():
    palette = encode_palette(np.random.default_rng(1).random((16, 3)), RULES)
    ids = np.full((576, 576), BACKGROUND, dtype=np.int16)
    for part in range(16):  # one lone pixel per part: a single wrong pixel would show
        ids[part * 30 + 7, 575 - part * 11] = part
    assert np.array_equal(decode_part_image(encode_part_image(ids, palette), palette), ids)


def test_decoding_tolerates_noise_up_to_the_limit_and_no_further():
    palette = np.array([[100, 100, 100], [180, 60, 60]], dtype=np.uint8)
    pixels = np.array(
        [
            [112, 100, 100],  # distance 12 = limit: still part 0
            [112, 101, 100],  # distance sqrt(145) > 12: unknown
            [180, 60, 48],  # distance 12 from part 1
            [173, 67, 67],  # distance sqrt(3 * 49) = 12.12: unknown
            [0, 0, 0],  # black background
        ],
        dtype=np.uint8,
    )[None]
    assert DEFAULT_DECODE_LIMIT == 12.0
    assert decode_part_image(pixels, palette).tolist() == [[0, -1, 1, -1, -1]]
    assert decode_part_image(pixels, palette, limit=13.0).tolist() == [[0, 0, 1, 1, -1]]


def test_ties_go_to_the_lower_part_id():
    palette = np.array([[124, 100, 100], [100, 100, 100]], dtype=np.uint8)
    pixel = np.array([[[112, 100, 100]]], dtype=np.uint8)  # 12 from both
    assert decode_part_image(pixel, palette).tolist() == [[0]]


def test_alpha_zero_is_background_whatever_the_colour():
    palette = np.array([[40, 40, 40], [200, 200, 200]], dtype=np.uint8)
    ids = np.array([[0, 1], [1, 0]])
    alpha = np.array([[255, 0], [1, 0]], dtype=np.uint8)
    decoded = decode_part_image(encode_part_image(ids, palette), palette, alpha=alpha)
    assert decoded.tolist() == [[0, -1], [1, -1]]


def test_palette_from_a_part_map_list_decodes_the_same():
    palette = encode_palette(np.array([[0.2, 0.3, 0.4], [0.8, 0.7, 0.6]]), RULES)
    ids = np.array([[0, 1, -1]])
    rgb = encode_part_image(ids, palette.tolist())
    assert np.array_equal(decode_part_image(rgb, palette.tolist()), ids)


@pytest.mark.parametrize(
    "rgb, alpha, message",
    [
        (np.zeros((2, 2, 3), np.float32), None, "uint8"),
        (np.zeros((2, 2, 4), np.uint8), None, "uint8"),
        (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3), np.uint8), "alpha shape"),
    ],
)
def test_bad_images_are_rejected(rgb, alpha, message):
    with pytest.raises(ValueError, match=message):
        decode_part_image(rgb, np.array([[40, 40, 40]]), alpha=alpha)


@pytest.mark.parametrize("palette", [np.array([[40.5, 40, 40]]), np.array([[40, 40, 300]]), np.zeros((2, 2), int)])
def test_bad_palettes_are_rejected(palette):
    with pytest.raises(ValueError, match="palette"):
        decode_part_image(np.zeros((1, 1, 3), np.uint8), palette)
