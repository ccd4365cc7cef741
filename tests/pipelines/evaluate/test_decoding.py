"""Decoding generated part maps: with the true palette (the oracle) and without it (clustering)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from models.metrics import sequence_matching
from pipelines.build.colour import decode_part_image, encode_part_image
from pipelines.build.dataset import MAX_PARTS
from pipelines.build.framepack import unpack
from pipelines.evaluate.decoding import cluster_colours, decode_by_clustering, decode_with_palette
from schemas.assets import AssetRef
from schemas.render import RenderSpec
from tests.synthetic_samples import palette_for, part_grid

SPEC = RenderSpec(n_views=2, n_frames=2, resolution=32)


def test_generated_part_maps_decode_to_the_nearest_colour_or_background():
    palette = np.array([[200, 40, 40], [40, 200, 40]], dtype=np.uint8)
    pixels = np.array([[[190, 50, 45], [0, 0, 0], [60, 170, 60], [30, 25, 20], [150, 110, 40]]], dtype=np.uint8)
    assert decode_with_palette(pixels, palette).tolist() == [[0, -1, 1, -1, 0]]
    # With a limit, pipelines.build.colour's exact semantics: far from every colour is unknown.
    assert decode_with_palette(pixels, palette, limit=20.0).tolist() == [[0, -1, -1, -1, -1]]


def relabelled_by_matching(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Cluster labels renamed to the true ids they match (one matching for the whole sample); -2 unmatched."""
    matching = sequence_matching(labels, truth)
    lookup = {label: matching.get(label, -2) for label in np.unique(labels) if label >= 0}
    return np.vectorize(lambda x: lookup.get(int(x), -1))(labels)


def assert_recovers_exactly(labels: np.ndarray, truth: np.ndarray) -> None:
    """A one-to-one renaming of the labels gives the truth, pixel for pixel."""
    n_labels, n_parts = len(np.unique(labels[labels >= 0])), len(np.unique(truth[truth >= 0]))
    assert n_labels == n_parts, (n_labels, n_parts)
    assert np.array_equal(relabelled_by_matching(labels, truth), truth)


@pytest.mark.parametrize("n_parts", [1, 3, 16])
def test_clustering_recovers_the_parts_of_an_encoded_sample_exactly(n_parts):
    truth = part_grid(4, 3, 48, n_parts)  # [V, F, H, W]
    labels = decode_by_clustering(encode_part_image(truth, palette_for(n_parts, SPEC)))
    assert labels.shape == truth.shape and labels.dtype == np.int16
    assert_recovers_exactly(labels, truth)


@pytest.fixture(scope="module")
def cesium_man_render(shared_gltf: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real Blender render of CesiumMan (2 views x 2 frames, 48 px): part maps and their part ids."""
    from pipelines.build.worker import AssetWorker
    from schemas.filters import FilterRules

    path = shared_gltf / "CesiumMan.glb"
    ref = AssetRef(
        file_identifier="file://CesiumMan.glb", source="local", license="CC-BY-4.0", file_type="glb",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), local_path=str(path),
    )
    spec = RenderSpec(n_views=2, n_frames=2, resolution=48, samples=2)
    worker = AssetWorker(spec, FilterRules(), threads=1, log_path=tmp_path_factory.mktemp("log") / "worker.log")
    try:
        (sample, *_) = worker.process(ref).samples
    finally:
        worker.close()
    parts = unpack(sample.parts, range(spec.n_views), range(spec.n_frames))
    palette = np.array(sample.part_map.palette, dtype=np.uint8)
    return parts, decode_part_image(parts, palette, limit=spec.colours.decode_limit), palette


def test_clustering_recovers_the_parts_of_a_blender_render_exactly(cesium_man_render):
    parts, truth, palette = cesium_man_render
    assert len(np.unique(truth[truth >= 0])) >= 3  # a rig with several parts in view
    assert_recovers_exactly(decode_by_clustering(parts), truth)
    assert np.array_equal(decode_with_palette(parts, palette), truth)  # the oracle agrees


def test_clustering_of_noisy_part_maps_is_as_good_as_the_true_palette():
    # Generated maps are never exact: Gaussian noise of 6 units a channel on 9 parts.
    truth = part_grid(4, 4, 32, 9)
    palette = palette_for(9, SPEC)
    noisy = encode_part_image(truth, palette) + np.random.default_rng(0).normal(0, 6, (*truth.shape, 3))
    noisy = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    oracle = (decode_with_palette(noisy, palette) == truth).mean()
    clustered = (relabelled_by_matching(decode_by_clustering(noisy), truth) == truth).mean()
    assert oracle > 0.99 and clustered >= oracle - 0.001, (clustered, oracle)


def test_clustering_is_deterministic_and_ignores_the_order_of_images():
    truth = part_grid(3, 2, 32, 5)
    noisy = encode_part_image(truth, palette_for(5, SPEC)).astype(np.int64)
    noisy = np.clip(noisy + np.random.default_rng(1).integers(-8, 9, noisy.shape), 0, 255).astype(np.uint8)
    first = decode_by_clustering(noisy)
    assert np.array_equal(decode_by_clustering(noisy), first)
    reordered = decode_by_clustering(noisy[::-1, ::-1])[::-1, ::-1]
    assert np.array_equal(reordered, first)  # the same labels, not only the same partition


def test_small_stray_colours_join_the_nearest_part():
    # 3 parts plus a few pixels of an off-palette colour (below 0.2 % of the foreground): no part of their own.
    truth = part_grid(2, 2, 48, 3)
    images = encode_part_image(truth, palette_for(3, SPEC))
    ys, xs = np.nonzero(truth[0, 0] == 0)
    images[0, 0, ys[:2], xs[:2]] = images[0, 0, ys[0], xs[0]] // 2 + 40  # two stray pixels
    labels = decode_by_clustering(images)
    assert len(np.unique(labels[labels >= 0])) == 3


def test_noise_decodes_to_at_most_the_largest_part_count():
    # An untrained part branch emits noise: every colour, no structure. The decoding stays bounded.
    noise = np.random.default_rng(2).integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
    labels = decode_by_clustering(noise)
    found = np.unique(labels[labels >= 0])
    assert 1 < len(found) <= MAX_PARTS and np.array_equal(found, np.arange(len(found)))
    sizes = np.bincount(labels[labels >= 0])
    assert (np.diff(sizes) <= 0).all()  # numbered by size, largest first


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="uint8"):
        decode_by_clustering(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="bandwidth"):
        cluster_colours(np.zeros((4, 4, 3), np.uint8), bandwidth=10, merge_distance=5)
