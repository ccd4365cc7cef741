"""Evaluation metrics against cases worked out by hand and against reference implementations."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from models.metrics import (
    adjusted_rand_index,
    part_consistency,
    part_metrics,
    part_metrics_grid,
    part_metrics_sequence,
    sequence_matching,
    psnr,
    ssim,
)

# 4 x 4 label maps. TWO_HALVES: part 0 on the left two columns (8 px), part 1 on the right two (8 px).
TWO_HALVES = np.array([[0, 0, 1, 1]] * 4)
# The right half split in two: top rows label 1, bottom rows label 2 (4 px each).
RIGHT_HALF_SPLIT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]])
# Three true parts: columns 0-1 (8 px), column 2 (4 px), column 3 (4 px).
THREE_COLUMNS = np.array([[0, 0, 1, 2]] * 4)


def test_identical_partitions_score_one():
    assert part_metrics(RIGHT_HALF_SPLIT, RIGHT_HALF_SPLIT) == {
        "miou": 1.0,
        "ari": 1.0,
        "f1": 1.0,
        "mean_accuracy": 1.0,
    }


def test_a_permutation_of_labels_still_scores_one_after_matching():
    relabelled = np.choose(RIGHT_HALF_SPLIT, [7, 3, 5])  # 0 -> 7, 1 -> 3, 2 -> 5
    assert part_metrics(relabelled, RIGHT_HALF_SPLIT) == {"miou": 1.0, "ari": 1.0, "f1": 1.0, "mean_accuracy": 1.0}


def test_a_split_part():
    # Truth TWO_HALVES, prediction splits part 1 into two 4-pixel halves.
    # IoU: t0-p0 = 8/8 = 1; t1-p1 = t1-p2 = 4/8 = 0.5. Matching t0<->p0, t1<->p1.
    #   mIoU = (1 + 0.5) / 2 = 0.75;  mean accuracy = (8/8 + 4/8) / 2 = 0.75
    #   F1: both true parts found (IoU >= 0.5): 2 * 2 / (2 true + 3 predicted) = 0.8
    # ARI, n = 16, contingency [[8, 0, 0], [0, 4, 4]]:
    #   index = C(8,2) + 2 C(4,2) = 28 + 12 = 40; rows = 2 C(8,2) = 56; columns = 28 + 6 + 6 = 40
    #   expected = 56 * 40 / C(16,2) = 2240 / 120 = 56/3; max = (56 + 40) / 2 = 48
    #   ARI = (40 - 56/3) / (48 - 56/3) = (64/3) / (88/3) = 8/11
    scores = part_metrics(RIGHT_HALF_SPLIT, TWO_HALVES)
    assert scores == pytest.approx({"miou": 0.75, "ari": 8 / 11, "f1": 0.8, "mean_accuracy": 0.75}, abs=1e-12)


def test_a_merged_part():
    # Truth THREE_COLUMNS, prediction TWO_HALVES merges parts 1 and 2.
    # IoU: t0-p0 = 1; t1-p1 = t2-p1 = 4/8 = 0.5; one of t1, t2 stays unmatched (0).
    #   mIoU = (1 + 0.5 + 0) / 3 = 0.5
    #   mean accuracy = (8/8 + 4/4 + 0) / 3 = 2/3: the matched 4-pixel true part lies wholly inside p1
    #   F1: 2 found, 2 * 2 / (3 true + 2 predicted) = 0.8
    # ARI is symmetric in its two labellings, and this is the split case transposed: 8/11.
    scores = part_metrics(TWO_HALVES, THREE_COLUMNS)
    assert scores == pytest.approx({"miou": 0.5, "ari": 8 / 11, "f1": 0.8, "mean_accuracy": 2 / 3}, abs=1e-12)


def test_an_empty_prediction():
    # Every foreground pixel predicted -1: nothing to match.
    # ARI: one predicted cluster; index = rows = 56, columns = C(16,2) = 120, expected = 56 * 120 / 120 = 56,
    #   max = (56 + 120) / 2 = 88: ARI = (56 - 56) / (88 - 56) = 0.
    scores = part_metrics(np.full((4, 4), -1), TWO_HALVES)
    assert scores == {"miou": 0.0, "ari": 0.0, "f1": 0.0, "mean_accuracy": 0.0}


def test_a_missed_pixel_inside_one_part():
    # One true part of 4 px, prediction labels 3 of them: IoU = 3 / 4, accuracy 3 / 4, F1 = 2 * 1 / 2.
    # ARI: one true cluster, two predicted ({-1}: 1 px, {0}: 3 px): index = 0 + 3 = 3, rows = C(4,2) = 6,
    #   columns = 3, expected = 6 * 3 / 6 = 3, max = 4.5: ARI = 0 / 1.5 = 0.
    scores = part_metrics(np.array([[0, 0], [0, -1]]), np.zeros((2, 2), int))
    assert scores == {"miou": 0.75, "ari": 0.0, "f1": 1.0, "mean_accuracy": 0.75}


def test_parts_painted_over_the_background_are_errors():
    # The union of true and predicted foreground is scored: 8 pixels.
    true = np.array([[-1, -1, 0, 0], [1, 1, -1, -1]])
    pred = np.array([[5, 5, 0, 0], [1, 1, 9, 9]])  # labels 5 and 9 painted over the background
    # Matching t0<->p0, t1<->p1 (IoU 1 each); p5 and p9 stay unmatched.
    #   mIoU 1, mean accuracy 1 (every true pixel has its label); F1 = 2 * 2 / (2 true + 4 predicted) = 2/3.
    # ARI over 8 pixels, contingency rows (-1, 0, 1) x columns (0, 1, 5, 9): [[0, 0, 2, 2], [2, 0, 0, 0], [0, 2, 0, 0]]
    #   index = 4 C(2,2) = 4; rows = C(4,2) + 2 C(2,2) = 8; columns = 4 C(2,2) = 4
    #   expected = 8 * 4 / C(8,2) = 32/28 = 8/7; max = 6: ARI = (4 - 8/7) / (6 - 8/7) = 20/34 = 10/17
    assert part_metrics(pred, true) == pytest.approx({"miou": 1.0, "ari": 10 / 17, "f1": 2 / 3, "mean_accuracy": 1.0}, abs=1e-12)
    # Part 0 spilling onto the background: IoU 2 / 4 for part 0.
    spilled = np.array([[0, 0, 0, 0], [1, 1, -1, -1]])
    assert part_metrics(spilled, true)["miou"] == pytest.approx((0.5 + 1.0) / 2)
    assert part_metrics(true, true) == {"miou": 1.0, "ari": 1.0, "f1": 1.0, "mean_accuracy": 1.0}


def test_a_truth_without_foreground_scores_nan():
    scores = part_metrics(TWO_HALVES, np.full((4, 4), -1))
    assert all(math.isnan(v) for v in scores.values())


def test_f1_threshold_is_inclusive_and_configurable():
    # The split case: t1's match has IoU exactly 0.5.
    assert part_metrics(RIGHT_HALF_SPLIT, TWO_HALVES, iou_threshold=0.5)["f1"] == pytest.approx(0.8)
    # Only t0 found above 0.6: 2 * 1 / 5.
    assert part_metrics(RIGHT_HALF_SPLIT, TWO_HALVES, iou_threshold=0.6)["f1"] == pytest.approx(0.4)


def test_ari_matches_scikit_learn_on_a_larger_case():
    # Reference: sklearn.metrics.adjusted_rand_score(true.ravel(), pred.ravel()) with scikit-learn 1.6.1.
    y, x = np.mgrid[0:24, 0:20]
    true = (x // 5 + 4 * (y // 12)) % 6
    pred = ((x + y) // 6) % 5
    assert part_metrics(pred, true)["ari"] == pytest.approx(0.13878694976611802, rel=1e-12)


def test_ari_degenerate_tables():
    assert adjusted_rand_index(np.array([[5]])) == 1.0  # one cluster on both sides
    assert adjusted_rand_index(np.eye(4, dtype=int)) == 1.0  # all singletons on both sides
    assert adjusted_rand_index(np.array([[1]])) == 1.0  # a single pixel


def test_ari_stays_exact_on_full_size_images():
    # 576 x 576 px: pair counts reach 5.5e10 and their products overflow int64.
    true = np.repeat(np.arange(4), 576 * 576 // 4).reshape(576, 576)  # four bands of 144 rows
    assert part_metrics(true, true)["ari"] == 1.0
    pred = true.copy()
    pred[:144, :288] = 1  # the left half of band 0 joins band 1
    # Contingency rows: t0 -> {p0: Q, p1: Q}, t1 -> {p1: 2Q}, t2 -> {p2: 2Q}, t3 -> {p3: 2Q}, Q = 41472.
    # The ARI formula in exact rational arithmetic:
    q = 41472
    index = 2 * comb2(q) + 3 * comb2(2 * q)
    rows = 4 * comb2(2 * q)
    cols = comb2(q) + comb2(3 * q) + 2 * comb2(2 * q)
    expected = Fraction(rows * cols, comb2(8 * q))
    ari = (index - expected) / (Fraction(rows + cols, 2) - expected)
    assert part_metrics(pred, true)["ari"] == pytest.approx(float(ari), rel=1e-12)


def comb2(n: int) -> int:
    return n * (n - 1) // 2


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        part_metrics(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_grid_means_overall_per_view_and_per_frame():
    empty_truth = np.full((4, 4), -1)
    # [V=2, F=3]; cell (0, 2) has no truth and is skipped. mIoU per cell:
    #   view 0: 1, 1, -      view 1: 0.75 (split), 0 (empty prediction), 1
    true = np.array([[TWO_HALVES, TWO_HALVES, empty_truth], [TWO_HALVES, TWO_HALVES, TWO_HALVES]])
    pred = np.array(
        [[TWO_HALVES, TWO_HALVES, TWO_HALVES], [RIGHT_HALF_SPLIT, np.full((4, 4), -1), np.choose(TWO_HALVES, [4, 2])]]
    )
    grid = part_metrics_grid(pred, true)
    assert grid["miou"] == pytest.approx((1 + 1 + 0.75 + 0 + 1) / 5)
    assert grid["ari"] == pytest.approx((3 + 8 / 11 + 0) / 5)
    assert [v["miou"] for v in grid["per_view"]] == pytest.approx([1.0, (0.75 + 0 + 1) / 3])
    assert [f["miou"] for f in grid["per_frame"]] == pytest.approx([(1 + 0.75) / 2, (1 + 0) / 2, 1.0])
    assert [f["f1"] for f in grid["per_frame"]] == pytest.approx([(1 + 0.8) / 2, (1 + 0) / 2, 1.0])
    assert set(grid) == {"miou", "ari", "f1", "mean_accuracy", "per_view", "per_frame"}


def test_grid_view_without_any_truth_is_nan():
    true = np.stack([np.stack([TWO_HALVES]), np.stack([np.full((4, 4), -1)])])  # [2, 1, 4, 4]
    grid = part_metrics_grid(true, true)
    assert grid["miou"] == 1.0
    assert grid["per_view"][0]["miou"] == 1.0
    assert math.isnan(grid["per_view"][1]["miou"])


def test_grid_needs_two_matching_four_dimensional_grids():
    with pytest.raises(ValueError, match="V, F, H, W"):
        part_metrics_grid(TWO_HALVES, TWO_HALVES)


def swapped_grid(n_views: int, n_frames: int, swapped: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Truth TWO_HALVES in every cell of a [V, F] grid; the prediction swaps parts 0 and 1 in the given cells."""
    true = np.broadcast_to(TWO_HALVES, (n_views, n_frames, 4, 4)).copy()
    pred = true.copy()
    for v, f in swapped:
        pred[v, f] = 1 - TWO_HALVES
    return pred, true


def test_a_swap_between_views_keeps_per_image_scores_but_not_sequence_scores():
    # Three views x two frames; view 1 swaps the two parts in both frames.
    pred, true = swapped_grid(3, 2, [(1, 0), (1, 1)])
    assert part_metrics_grid(pred, true)["miou"] == 1.0  # every image on its own is perfect
    # One matching for the sample: label 0 covers t0 in 4 images (32 px) and t1 in 2 (16 px);
    # pooled IoU(t0, p0) = 32 / (48 + 48 - 32) = 1/2 beats IoU(t0, p1) = 16 / 80: p0 -> t0, p1 -> t1.
    assert sequence_matching(pred, true) == {0: 0, 1: 1}
    sequence = part_metrics_sequence(pred, true)
    # Under that matching the four unswapped images score 1 and the two swapped ones 0.
    assert sequence["miou"] == pytest.approx(4 / 6) and sequence["mean_accuracy"] == pytest.approx(4 / 6)
    assert sequence["f1"] == pytest.approx(4 / 6)
    assert [v["miou"] for v in sequence["per_view"]] == [1.0, 0.0, 1.0]
    # Pooled ARI over the 96 pixels: contingency [[32, 16], [16, 32]].
    index, rows = 2 * comb2(32) + 2 * comb2(16), 2 * comb2(48)
    expected = Fraction(rows * rows, comb2(96))
    assert sequence["ari"] == pytest.approx(float((index - expected) / (rows - expected)), rel=1e-12)
    assert [v["ari"] for v in sequence["per_view"]] == [1.0, 1.0, 1.0]  # each view on its own is consistent
    # Two thirds of the pixels keep the sample's identity, and of their frame's; all keep their view's.
    assert part_consistency(pred, true) == pytest.approx(
        {"consistency": 2 / 3, "consistency_views": 2 / 3, "consistency_frames": 1.0}
    )


def test_a_swap_over_time_is_a_frame_inconsistency():
    # Two views x three frames; frame 2 swaps the parts in both views.
    pred, true = swapped_grid(2, 3, [(0, 2), (1, 2)])
    assert part_metrics_grid(pred, true)["miou"] == 1.0
    assert part_metrics_sequence(pred, true)["miou"] == pytest.approx(4 / 6)
    assert part_consistency(pred, true) == pytest.approx(
        {"consistency": 2 / 3, "consistency_views": 1.0, "consistency_frames": 2 / 3}
    )


def test_a_consistent_prediction_scores_the_same_at_both_levels():
    pred, true = swapped_grid(2, 2, [])
    relabelled = np.choose(pred, [4, 2])  # one relabelling for the whole sample
    per_image, sequence = part_metrics_grid(relabelled, true), part_metrics_sequence(relabelled, true)
    assert {m: sequence[m] for m in ("miou", "ari", "f1", "mean_accuracy")} == {m: per_image[m] for m in ("miou", "ari", "f1", "mean_accuracy")}
    assert part_consistency(relabelled, true) == {"consistency": 1.0, "consistency_views": 1.0, "consistency_frames": 1.0}


def test_consistency_ignores_a_part_missed_everywhere_and_counts_a_relabelled_one():
    # THREE_COLUMNS truth; the prediction merges parts 1 and 2 in every image: one of them has no
    # identity anywhere, which is consistent (mIoU counts the miss, consistency counts swaps).
    true = np.broadcast_to(THREE_COLUMNS, (2, 2, 4, 4)).copy()
    merged = np.broadcast_to(TWO_HALVES, (2, 2, 4, 4)).copy()
    assert part_consistency(merged, true)["consistency"] == 1.0
    # Two parts, one image labels part 1 as 7: the sample matches t1 to label 1 (pooled IoU 24/32),
    # so that image's 8 pixels of part 1 change identity: 1 - 8/64.
    pred, truth = swapped_grid(2, 2, [])
    pred[1, 1][TWO_HALVES == 1] = 7
    assert part_consistency(pred, truth)["consistency"] == pytest.approx(1 - 8 / 64)


def test_psnr_by_hand():
    zeros = np.zeros((4, 4, 3), np.uint8)
    # MSE 16^2 = 256: 10 log10(255^2 / 256) = 20 log10(255 / 16) = 24.0486...
    assert psnr(zeros, np.full((4, 4, 3), 16, np.uint8)) == pytest.approx(20 * math.log10(255 / 16))
    assert psnr(zeros, np.full((4, 4, 3), 255, np.uint8)) == pytest.approx(0.0)
    # Floats default to a data range of 1: MSE 0.01 -> 20 dB.
    assert psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)) == pytest.approx(20.0)
    assert psnr(zeros, zeros) == math.inf
    # A single changed value (by 255 in one of 48) is not inf: MSE = 255^2 / 48 -> 10 log10(48) = 16.81 dB.
    one_off = zeros.copy()
    one_off[3, 3, 2] = 255
    assert psnr(zeros, one_off) == pytest.approx(10 * math.log10(48))


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images have zero (co)variances: SSIM = (2 * 100 * 110 + C1) / (100^2 + 110^2 + C1) with
    # C1 = (0.01 * 255)^2 = 6.5025 -> 22006.5025 / 22106.5025 = 0.995476...
    a = np.full((16, 16), 100, np.uint8)
    b = np.full((16, 16), 110, np.uint8)
    assert ssim(a, b) == pytest.approx(22006.5025 / 22106.5025, abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_matches_scikit_image():
    # References: skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    # use_sample_covariance=False, data_range=255[, channel_axis=-1]) with scikit-image 0.24.0.
    y, x = np.mgrid[0:24, 0:20]
    a = ((x * 7 + y * 13) % 256).astype(np.uint8)
    b = ((x * x + 3 * y + 5 * ((x + y) % 4)) % 256).astype(np.uint8)
    assert ssim(a, b) == pytest.approx(0.16047134374059152, rel=1e-9)
    c = np.stack([a, b, (a // 2 + b // 3).astype(np.uint8)], -1)
    d = np.stack([b, (a // 3 + 40).astype(np.uint8), a], -1)
    assert ssim(c, d) == pytest.approx(0.3248070033976997, rel=1e-9)


def test_ssim_of_a_batch_is_the_mean_of_its_images():
    y, x = np.mgrid[0:16, 0:16]
    a = np.stack([(x * 9 + y) % 256, (x + y * 5) % 256, x * y % 256], -1).astype(np.uint8)
    b = np.roll(a, 1, axis=0)
    c = np.roll(a, 2, axis=1)
    assert ssim(np.stack([a, a]), np.stack([b, c])) == pytest.approx((ssim(a, b) + ssim(a, c)) / 2)


def test_ssim_needs_images_larger_than_the_window():
    with pytest.raises(ValueError, match="larger than 11"):
        ssim(np.zeros((10, 10)), np.zeros((10, 10)))
