"""The baselines of the report: RGB clustering (training-free), the codec round trip, SAM 2's status."""

from __future__ import annotations

import numpy as np
import pytest

from models.vae import PixelCodec
from pipelines.evaluate.baselines import rgb_clustering_parts, round_trip, sam2_status
from pipelines.train.latents import load_codec
from tests.models.inputs import block_palette, block_part_ids, block_videos
from tests.pipelines.evaluate.test_decoding import assert_recovers_exactly
from tests.training_helpers import write_tiny_vae


def test_rgb_clustering_finds_flat_coloured_parts_and_the_background():
    # Blocks of one albedo each on a grey backdrop: colour alone separates them, and the backdrop,
    # which holds the borders, is the background.
    truth = block_part_ids(2, 3, 32, 4)
    rgb, _ = block_videos(truth, block_palette(4))
    labels = rgb_clustering_parts(rgb)
    assert labels.shape == truth.shape
    assert_recovers_exactly(labels, truth)


def test_rgb_clustering_cannot_split_parts_of_one_colour():
    # Parts 0 and 1 share an albedo: the baseline sees one part where there are two.
    truth = block_part_ids(2, 2, 32, 3)
    rgb, _ = block_videos(truth, block_palette(3))
    rgb[truth == 1] = rgb[truth == 0][0]
    labels = rgb_clustering_parts(rgb)
    assert len(np.unique(labels[labels >= 0])) == 2


def test_the_round_trip_is_the_identity_in_pixel_space_and_lossy_through_a_vae(tmp_path):
    grid = np.random.default_rng(0).integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    assert np.array_equal(round_trip(PixelCodec(), grid), grid)
    vae = load_codec(str(write_tiny_vae(tmp_path / "vae")))
    through = round_trip(vae, grid)
    assert through.shape == grid.shape and through.dtype == np.uint8 and not np.array_equal(through, grid)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda tmp: None, "not computed: no SAM 2 weights path given"),
        (lambda tmp: tmp / "absent", "not computed: SAM 2 weights not found at {path}"),
        (lambda tmp: tmp, "not computed: SAM 2 weights found at {path}, but this project does not run SAM 2 yet (no sam2 package)"),
    ],
)
def test_sam2_says_why_it_is_not_computed(tmp_path, make, expected):
    path = make(tmp_path)
    assert sam2_status(None if path is None else str(path)) == expected.format(path=path)
