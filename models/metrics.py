"""Evaluation metrics: kinematic part segmentation (mIoU, ARI, F1, mean accuracy), the consistency
of part identities across views and frames, and RGB (PSNR, SSIM).

Part metrics compare a predicted and a true label map (integers, -1 = background). The scored pixels
are the union of true and predicted foreground: a true-foreground pixel predicted as -1 is a miss, and
a part painted over the true background is an error (it enlarges that predicted part, lowering its
IoU, and is a pixel of its own true cluster, -1, in the ARI). Predicted parts are matched one-to-one to
true parts by Hungarian matching on IoU, so the label values themselves do not matter.

- ``miou``: mean over true parts of the IoU with the matched predicted part (0 when unmatched).
- ``mean_accuracy``: mean over true parts of the fraction of its pixels given the matched label.
- ``f1``: matched-part F1; a true part is found when its matched part's IoU is at least
  ``iou_threshold`` (0.5), so F1 = 2 * found / (n_true_parts + n_predicted_parts).
- ``ari``: adjusted Rand index (Hubert and Arabie) between the two labellings of the scored pixels
  (background, -1, is a label like any other); no matching needed.

Matching can be per image (the default: a model that swaps two parts' labels between views still
scores 1) or fixed for a whole sample (:func:`sequence_matching`, one assignment over every view and
frame: :func:`part_metrics_sequence`). :func:`part_consistency` counts the pixels whose part keeps
its matched identity across views and frames.

An image with no true foreground scores NaN, and the grid aggregation skips it.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.optimize import linear_sum_assignment

PART_METRICS = ("miou", "ari", "f1", "mean_accuracy")
CONSISTENCY_METRICS = ("consistency", "consistency_views", "consistency_frames")

# SSIM as in Wang et al. 2004: 11x11 Gaussian window (sigma 1.5, radius 5), K1 = 0.01, K2 = 0.03.
_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # scipy's radius = int(truncate * sigma + 0.5) = 5
_SSIM_RADIUS = 5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


class _Table:
    """The contingency of two labellings over the union of their foregrounds, and the IoU of every
    (true part, predicted part) pair."""

    def __init__(self, pred: np.ndarray, true: np.ndarray):
        scored = (true >= 0) | (pred >= 0)
        self.true_ids, true_idx = np.unique(true[scored], return_inverse=True)
        self.pred_ids, pred_idx = np.unique(pred[scored], return_inverse=True)
        shape = (len(self.true_ids), len(self.pred_ids))
        self.counts = np.bincount(true_idx * shape[1] + pred_idx, minlength=shape[0] * shape[1]).reshape(shape)
        true_parts, pred_parts = self.true_ids >= 0, self.pred_ids >= 0
        self.parts = self.true_ids[true_parts]  # true part labels (rows of overlap / iou)
        self.predicted = self.pred_ids[pred_parts]  # predicted part labels (columns)
        self.overlap = self.counts[true_parts][:, pred_parts].astype(np.float64)
        # Sizes over every scored pixel: a predicted part's pixels on the true background count too.
        self.true_size = self.counts[true_parts].sum(axis=1).astype(np.float64)
        pred_size = self.counts[:, pred_parts].sum(axis=0).astype(np.float64)
        union = self.true_size[:, None] + pred_size[None, :] - self.overlap
        self.iou = np.divide(self.overlap, union, out=np.zeros_like(self.overlap), where=union > 0)

    def hungarian(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of the matching that maximises the summed IoU."""
        return linear_sum_assignment(self.iou, maximize=True)

    def pairs(self, matching: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Row and column indices of a given matching (predicted label -> true label) present here."""
        row_of = {int(t): i for i, t in enumerate(self.parts)}
        found = [(row_of[int(t)], j) for j, p in enumerate(self.predicted) if (t := matching.get(int(p))) is not None and int(t) in row_of]
        rows = np.array([r for r, _ in found], dtype=np.int64)
        cols = np.array([c for _, c in found], dtype=np.int64)
        return rows, cols

    def identities(self, matching: Mapping[int, int] | None = None) -> dict[int, int]:
        """True part -> matched predicted label, for matched pairs that share at least one pixel."""
        rows, cols = self.hungarian() if matching is None else self.pairs(matching)
        return {int(self.parts[r]): int(self.predicted[c]) for r, c in zip(rows, cols) if self.overlap[r, c] > 0}


def part_metrics(
    pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5, matching: Mapping[int, int] | None = None
) -> dict[str, float]:
    """mIoU, ARI, F1 and mean accuracy of one predicted label map against the truth (same shape).

    ``matching`` (predicted label -> true label) fixes the assignment, as :func:`sequence_matching`
    gives it for a whole sample; without it, this image's own Hungarian matching is used.
    """
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    if not (true >= 0).any():
        return {name: math.nan for name in PART_METRICS}
    table = _Table(pred, true)
    rows, cols = table.hungarian() if matching is None else table.pairs(matching)
    matched_iou = np.zeros(len(table.parts))
    matched_iou[rows] = table.iou[rows, cols]
    matched_pixels = np.zeros(len(table.parts))
    matched_pixels[rows] = table.overlap[rows, cols]
    found = int((matched_iou >= iou_threshold).sum())
    return {
        "miou": float(matched_iou.mean()),
        "ari": adjusted_rand_index(table.counts),
        "f1": 2.0 * found / (len(table.parts) + len(table.predicted)),
        "mean_accuracy": float((matched_pixels / table.true_size).mean()),
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


def _check_grids(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    true = np.asarray(true)
    if pred.shape != true.shape or pred.ndim != 4:
        raise ValueError(f"expected two [V, F, H, W] grids of one shape, got {pred.shape} and {true.shape}")
    return pred, true


def part_metrics_grid(
    pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5, matching: Mapping[int, int] | None = None
) -> dict:
    """Part metrics of every image of a [V, F, H, W] grid (per-image matching, or ``matching`` for all).

    Returns each metric's mean over all scored images, plus ``per_view`` (V dicts, mean over frames)
    and ``per_frame`` (F dicts, mean over views). Images without true foreground are skipped (NaN
    where a view or frame has none at all).
    """
    pred, true = _check_grids(pred, true)
    n_views, n_frames = true.shape[:2]
    scores = np.array(
        [
            [[part_metrics(pred[v, f], true[v, f], iou_threshold, matching)[m] for m in PART_METRICS] for f in range(n_frames)]
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


def sequence_matching(pred: np.ndarray, true: np.ndarray) -> dict[int, int]:
    """One Hungarian matching (predicted label -> true label) on IoUs pooled over every pixel given:
    a sample's whole [V, F, H, W] grid, so a label means one part in every view and frame."""
    table = _Table(np.asarray(pred), np.asarray(true))
    rows, cols = table.hungarian()
    return {int(table.predicted[c]): int(table.parts[r]) for r, c in zip(rows, cols)}


def part_metrics_sequence(pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """:func:`part_metrics_grid` with one matching for the whole sample (:func:`sequence_matching`).

    mIoU, F1 and mean accuracy are per image, as in :func:`part_metrics_grid`, but under the
    sample's single matching, so a label that changes part between views or frames is an error.
    ARI needs no matching; its sequence form pools pixels instead: over the whole grid, over each
    view's frames (``per_view``) and over each frame's views (``per_frame``).
    """
    pred, true = _check_grids(pred, true)
    scores = part_metrics_grid(pred, true, iou_threshold, sequence_matching(pred, true))
    scores["ari"] = _pooled_ari(pred, true)
    for v, view in enumerate(scores["per_view"]):
        view["ari"] = _pooled_ari(pred[v], true[v])
    for f, frame in enumerate(scores["per_frame"]):
        frame["ari"] = _pooled_ari(pred[:, f], true[:, f])
    return scores


def _pooled_ari(pred: np.ndarray, true: np.ndarray) -> float:
    return adjusted_rand_index(_Table(pred, true).counts) if (true >= 0).any() else math.nan


def part_consistency(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """How often a part keeps its identity: fractions of true-foreground pixels of a [V, F, H, W] grid.

    In each image every true part has an identity, the predicted label matched to it by that image's
    own Hungarian matching (none when unmatched or sharing no pixel). A pixel is consistent when its
    part's identity in its image equals the part's identity over a group of images (matching pooled
    over the group):

    - ``consistency``: the group is the whole sample (:func:`sequence_matching`);
    - ``consistency_views``: the group is the pixel's frame, all views (a swap between views);
    - ``consistency_frames``: the group is the pixel's view, all frames (a swap over time).

    A part that is consistently missed (no identity anywhere) counts as consistent: this measures
    identity swaps, not segmentation quality, which mIoU measures.
    """
    pred, true = _check_grids(pred, true)
    n_views, n_frames = true.shape[:2]
    whole = _Table(pred, true).identities()
    per_frame = [_Table(pred[:, f], true[:, f]).identities() for f in range(n_frames)]
    per_view = [_Table(pred[v], true[v]).identities() for v in range(n_views)]
    kept = {name: 0 for name in CONSISTENCY_METRICS}
    total = 0
    for v in range(n_views):
        for f in range(n_frames):
            if not (true[v, f] >= 0).any():
                continue
            table = _Table(pred[v, f], true[v, f])
            own = table.identities()
            for part, size in zip(table.parts, table.true_size):
                part = int(part)
                total += int(size)
                for name, reference in (("consistency", whole), ("consistency_views", per_frame[f]), ("consistency_frames", per_view[v])):
                    kept[name] += int(size) * (own.get(part) == reference.get(part))
    return {name: kept[name] / total if total else math.nan for name in CONSISTENCY_METRICS}


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
