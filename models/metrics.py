"""Evaluation metrics: kinematic part segmentation (mIoU, ARI, F1, mean accuracy) and RGB (PSNR, SSIM).

Part metrics compare a predicted and a true label map (integers, -1 = background). Only pixels that
are foreground in the truth are scored: the metrics measure how the object is split into parts, not
its silhouette; a foreground pixel predicted as -1 is a miss. Predicted parts are matched one-to-one to
true parts by Hungarian matching on IoU, so the label values themselves do not matter.

- ``miou``: mean over true parts of the IoU with the matched predicted part (0 when unmatched).
- ``mean_accuracy``: mean over true parts of the fraction of its pixels given the matched label.
- ``f1``: matched-part F1; a true part is found when its matched part's IoU is at least
  ``iou_threshold`` (0.5), so F1 = 2 * found / (n_true_parts + n_predicted_parts).
- ``ari``: adjusted Rand index (Hubert and Arabie) between the two labellings of the scored pixels;
  no matching needed.

An image with no true foreground scores NaN, and the grid aggregation skips it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment

PART_METRICS = ("miou", "ari", "f1", "mean_accuracy")

# SSIM as in Wang et al. 2004: 11x11 Gaussian window (sigma 1.5, radius 5), K1 = 0.01, K2 = 0.03.
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # scipy's radius = int(truncate * sigma + 0.5) = 5
_SSIM_RADIUS = 5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def part_metrics(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """mIoU, ARI, F1 and mean accuracy of one predicted label map against the truth (same shape)."""
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    scored = true >= 0
    if not scored.any():
        return {name: math.nan for name in PART_METRICS}
    true_ids, true_idx = np.unique(true[scored], return_inverse=True)
    pred_ids, pred_idx = np.unique(pred[scored], return_inverse=True)
    counts = np.bincount(true_idx * len(pred_ids) + pred_idx, minlength=len(true_ids) * len(pred_ids))
    contingency = counts.reshape(len(true_ids), len(pred_ids))

    # Predicted -1 is "no part": it takes part in the ARI but can never be matched.
    parts = pred_ids >= 0
    overlap = contingency[:, parts].astype(np.float64)
    true_size = contingency.sum(axis=1).astype(np.float64)
    pred_size = overlap.sum(axis=0)
    iou = overlap / (true_size[:, None] + pred_size[None, :] - overlap)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    matched_iou = np.zeros(len(true_ids))
    matched_iou[rows] = iou[rows, cols]
    matched_pixels = np.zeros(len(true_ids))
    matched_pixels[rows] = overlap[rows, cols]
    found = int((matched_iou >= iou_threshold).sum())
    return {
        "miou": float(matched_iou.mean()),
        "ari": adjusted_rand_index(contingency),
        "f1": 2.0 * found / (len(true_ids) + int(parts.sum())),
        "mean_accuracy": float((matched_pixels / true_size).mean()),
    }


def adjusted_rand_index(contingency: np.ndarray) -> float:
    """ARI from a contingency table (rows: true clusters, columns: predicted clusters).

    ARI = (index - expected) / (max - expected) with index = sum C(n_ij, 2),
    expected = sum C(a_i, 2) * sum C(b_j, 2) / C(n, 2), max = (sum C(a_i, 2) + sum C(b_j, 2)) / 2.
    The denominator is 0 only when both labellings are one cluster or both all singletons, i.e.
    identical: ARI 1.
    """
    contingency = np.asarray(contingency, dtype=np.int64)
    n = int(contingency.sum())
    index = _pairs(contingency).sum()
    rows = _pairs(contingency.sum(axis=1)).sum()
    cols = _pairs(contingency.sum(axis=0)).sum()
    # Python ints: the product of pair counts overflows int64 for images of a few hundred pixels a side.
    total = n * (n - 1) // 2
    expected = int(rows) * int(cols) / total if total else 0.0
    maximum = (int(rows) + int(cols)) / 2
    if maximum == expected:
        return 1.0
    return float((int(index) - expected) / (maximum - expected))


def _pairs(counts: np.ndarray) -> np.ndarray:
    return counts * (counts - 1) // 2


def part_metrics_grid(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Part metrics of every image of a [V, F, H, W] grid.

    Returns each metric's mean over all scored images, plus ``per_view`` (V dicts, mean over frames)
    and ``per_frame`` (F dicts, mean over views). Images without true foreground are skipped (NaN
    where a view or frame has none at all).
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 4:
        raise ValueError(f"expected two [V, F, H, W] grids of one shape, got {pred.shape} and {true.shape}")
    n_views, n_frames = true.shape[:2]
    scores = np.array(
        [
            [[part_metrics(pred[v, f], true[v, f], iou_threshold)[m] for m in PART_METRICS] for f in range(n_frames)]
            for v in range(n_views)
        ]
    )  # [V, F, metric]

    def means(values: np.ndarray) -> dict[str, float]:
        scored = ~np.isnan(values[..., 0])
        return {
            m: float(values[..., i][scored].mean()) if scored.any() else math.nan for i, m in enumerate(PART_METRICS)
        }

    return {
        **means(scores),
        "per_view": [means(scores[v]) for v in range(n_views)],
        "per_frame": [means(scores[:, f]) for f in range(n_frames)],
    }


def psnr(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB over all elements (inf for identical inputs).

    ``data_range`` defaults to 255 for integer images and 1.0 for floating-point ones.
    """
    a, b, data_range = _prepare(a, b, data_range)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004) of two images [H, W] or [H, W, C] (or batches
    [..., H, W, C]); colour channels are scored separately and averaged.

    Gaussian window (sigma 1.5, 11x11), population statistics, C1 = (0.01 L)^2, C2 = (0.03 L)^2; the
    mean is taken over pixels at least 5 from the border, where the window lies inside the image.
    """
    a, b, data_range = _prepare(a, b, data_range)
    spatial = (0, 1) if a.ndim == 2 else (a.ndim - 3, a.ndim - 2)
    if min(a.shape[s] for s in spatial) <= 2 * _SSIM_RADIUS:
        raise ValueError(f"images must be larger than {2 * _SSIM_RADIUS + 1} pixels a side, got {a.shape}")
    sigma = [_SSIM_SIGMA if axis in spatial else 0.0 for axis in range(a.ndim)]

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=sigma, truncate=_SSIM_TRUNCATE, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    inside = tuple(slice(_SSIM_RADIUS, -_SSIM_RADIUS) if axis in spatial else slice(None) for axis in range(a.ndim))
    return float(ssim_map[inside].mean())


def _prepare(a: np.ndarray, b: np.ndarray, data_range: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} and {b.shape}")
    if data_range is None:
        data_range = 255.0 if np.issubdtype(a.dtype, np.integer) else 1.0
    return a.astype(np.float64), b.astype(np.float64), float(data_range)
