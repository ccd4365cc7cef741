"""Generated part maps -> part ids, with the true palette (the oracle) or without it (clustering).

A real input has no palette: :func:`decode_by_clustering` finds the part colours of a whole sample
(every view and frame at once, so a colour means one label everywhere) by mean-shift on the pixel
colours, and knows only what the colour code guarantees for every asset (:class:`schemas.parts.ColourRules`):
the background is black and two part colours are at least ``min_distance`` apart. Not the number
of parts, not their colours. :func:`decode_with_palette` takes the nearest colour of the asset's
true palette: it is told how many parts there are and what they look like, so it is an upper bound
(the "oracle" of the evaluation report).

The clustering (:func:`cluster_colours`) is deterministic, with no random start:

1. colours are counted on a grid of ``QUANTUM`` units per channel (their mean colour kept per cell),
   so the work grows with the number of distinct colours, not of pixels;
2. seeds: the peaks of that histogram smoothed by a Gaussian (sigma ``bandwidth / 2``) that hold at
   least a quarter of ``min_share`` of the pixels within ``bandwidth`` (a blurred small part keeps
   that much near its peak);
   at most the ``4 * max_clusters`` heaviest (pure noise has thousands of peaks; only
   ``max_clusters`` clusters can be kept);
3. mean-shift with a flat kernel of radius ``bandwidth`` moves each seed to the weighted mean of the
   colours within reach until it moves less than 0.01 (at most 100 rounds);
4. modes are kept in order of the pixels within reach (more first, then by colour), dropping any
   closer than ``merge_distance`` to one kept; fixed modes (black for part maps) come first;
5. every pixel takes its nearest mode; modes with fewer than ``min_share`` of the pixels (not counting
   the fixed modes') are dropped and their pixels take the nearest remaining mode; at most
   ``max_clusters`` modes stay, the largest.

For part maps the kernel radius is ``min_distance / 4`` (8 units by default): a seed between two part
colours never reaches both, so it cannot settle half-way; modes closer than ``min_distance / 2``
are one part (the colour code puts distinct parts twice as far apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter, uniform_filter
from scipy.sparse import csr_matrix
from scipy.spatial import cKDTree

from pipelines.build.colour import BACKGROUND, decode_part_image
from pipelines.build.dataset import MAX_PARTS
from schemas.parts import ColourRules

QUANTUM = 4  # colour grid of the counting step, in 0-255 units per channel
MIN_SHARE = 0.002  # smallest part kept: 0.2 % of the scored pixels of a sample
_CELLS = 256 // QUANTUM
_MAX_ROUNDS = 100
_SEEDS_PER_CLUSTER = 4  # at most this many seeds per cluster that can be kept (the heaviest peaks)


def decode_with_palette(images: np.ndarray, palette: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Part ids int16 [..., H, W] of part maps uint8 [..., H, W, 3], decoded with a known palette.

    Generated colours are never exact, so every pixel takes the nearest of the palette colours and
    the black background, however far (``limit=None``); with a ``limit`` it is
    :func:`pipelines.build.colour.decode_part_image` (farther than ``limit`` from every palette colour:
    unknown, -1).
    """
    if limit is not None:
        return decode_part_image(images, palette, limit=limit)
    with_background = np.vstack([palette, np.zeros((1, 3), np.uint8)])
    ids = decode_part_image(images, with_background, limit=float("inf"))
    ids[ids == len(palette)] = BACKGROUND
    return ids


@dataclass(frozen=True)
class Clusters:
    labels: np.ndarray  # int16 [...]: cluster of each pixel, -1 for the fixed (background) modes
    colours: np.ndarray  # float [K, 3]: the mode of cluster k


def decode_by_clustering(images: np.ndarray, rules: ColourRules | None = None, min_share: float = MIN_SHARE) -> np.ndarray:
    """Part ids int16 [..., H, W] of one sample's part maps uint8 [..., H, W, 3], without a palette.

    Pass a whole sample (e.g. ``[V, F, H, W, 3]``): labels are shared by every image given. Ids are
    0..K-1 in order of size (largest first), -1 for black; they are not the asset's part ids, which
    is why the metrics match them to the truth.
    """
    rules = rules or ColourRules()
    black = np.zeros((1, 3))
    return cluster_colours(
        images,
        bandwidth=rules.min_distance / 4,
        merge_distance=rules.min_distance / 2,
        min_share=min_share,
        fixed=black,
    ).labels


def cluster_colours(
    images: np.ndarray,
    bandwidth: float,
    merge_distance: float,
    min_share: float = MIN_SHARE,
    max_clusters: int = MAX_PARTS,
    fixed: np.ndarray | None = None,
) -> Clusters:
    """Deterministic mean-shift clustering of the colours of uint8 images [..., 3] (module docstring).

    ``fixed`` colours [M, 3] are modes that always exist and label their pixels -1 (found modes within
    ``merge_distance`` of one join it).
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 2 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [..., 3], got {images.dtype} {images.shape}")
    if not 0 < bandwidth <= merge_distance:
        raise ValueError(f"need 0 < bandwidth <= merge_distance, got {bandwidth} and {merge_distance}")
    if not 0 <= min_share < 1 or max_clusters < 1:
        raise ValueError(f"need 0 <= min_share < 1 and max_clusters >= 1, got {min_share} and {max_clusters}")
    fixed = np.zeros((0, 3)) if fixed is None else np.asarray(fixed, dtype=np.float64).reshape(-1, 3)
    pixels = images.reshape(-1, 3)
    points, weights, inverse = _counted(pixels)
    total = float(weights.sum())
    # A part of min_share pixels, blurred by generation, still has a quarter of them near its peak.
    seeds = _seeds(points, weights, bandwidth, min_share * total / 4, _SEEDS_PER_CLUSTER * max_clusters)
    modes, support = _shift(seeds, points, weights, bandwidth)
    found = _merged(modes, support, merge_distance, fixed)
    # Nearest mode, then drop the small ones (their pixels go to the nearest remaining mode).
    if not len(fixed) and not len(found):  # no seed (min_share above every colour's share)
        return Clusters(labels=np.full(images.shape[:-1], BACKGROUND, np.int16), colours=found)
    nearest = _nearest(points, np.vstack([fixed, found]))
    counts = np.bincount(nearest, weights=weights, minlength=len(fixed) + len(found))[len(fixed) :]
    scored = float(weights[nearest >= len(fixed)].sum())
    order = np.argsort(-counts, kind="stable")
    keep = order[counts[order] >= min_share * scored][:max_clusters]
    if not len(fixed) and not len(keep):  # every pixel needs a mode
        keep = order[:1]
    nearest = _nearest(points, np.vstack([fixed, found[keep]])) - len(fixed)
    # Number the clusters by their final size, largest first (pixels of dropped modes moved).
    final = np.bincount(nearest[nearest >= 0], weights=weights[nearest >= 0], minlength=len(keep))
    order = np.argsort(-final, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    labels = np.where(nearest < 0, BACKGROUND, rank[np.maximum(nearest, 0)]).astype(np.int16)
    return Clusters(labels=labels[inverse].reshape(images.shape[:-1]), colours=found[keep][order])


def _counted(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct colour cells: their mean colour [P, 3], pixel count [P], and each pixel's cell."""
    cells = pixels.astype(np.int64) // QUANTUM
    keys = (cells[:, 0] * _CELLS + cells[:, 1]) * _CELLS + cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.stack([np.bincount(inverse, weights=pixels[:, c].astype(np.float64)) for c in range(3)], axis=1)
    return sums / counts[:, None], counts.astype(np.float64), inverse.reshape(-1)


def _seeds(points: np.ndarray, weights: np.ndarray, bandwidth: float, min_weight: float, max_seeds: int) -> np.ndarray:
    """Peaks of the colour histogram: cells of the counting grid whose Gaussian-smoothed count is a
    local maximum and that hold at least ``min_weight`` pixels within ``bandwidth``; the
    ``max_seeds`` heaviest (then in grid order)."""
    cells = np.clip(np.floor(points / QUANTUM).astype(np.int64), 0, _CELLS - 1)
    histogram = np.zeros((_CELLS,) * 3)
    histogram[tuple(cells.T)] = weights
    reach = max(1, round(bandwidth / QUANTUM))
    smooth = gaussian_filter(histogram, sigma=reach / 2, mode="constant")
    mass = uniform_filter(histogram, size=2 * reach + 1, mode="constant") * (2 * reach + 1) ** 3
    peaks = (smooth == maximum_filter(smooth, size=3, mode="constant")) & (mass >= max(min_weight, 0.5)) & (smooth > 0)
    cells = np.argwhere(peaks)
    heaviest = np.argsort(-mass[tuple(cells.T)], kind="stable")[:max_seeds]
    return (cells[heaviest] + 0.5) * QUANTUM


def _shift(seeds: np.ndarray, points: np.ndarray, weights: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat-kernel mean-shift of every seed; returns the modes and the weight within reach of each.

    A seed stops once it moves less than 0.01; the colours within reach come from a k-d tree, so a
    round costs what the seeds reach, not seeds x colours (noise has tens of thousands of colours).
    """
    tree = cKDTree(points)
    current = seeds.astype(np.float64, copy=True)
    moving = np.arange(len(current))
    for _ in range(_MAX_ROUNDS):
        if not len(moving):
            break
        reach = _within(tree, current[moving], radius, weights)
        mass = np.asarray(reach.sum(axis=1)).ravel()
        moved = np.where(mass[:, None] > 0, (reach @ points) / np.maximum(mass, 1e-12)[:, None], current[moving])
        still = np.abs(moved - current[moving]).max(axis=1) >= 0.01
        current[moving] = moved
        moving = moving[still]
    support = np.asarray(_within(tree, current, radius, weights).sum(axis=1)).ravel() if len(current) else np.zeros(0)
    return current, support


def _within(tree: cKDTree, centres: np.ndarray, radius: float, weights: np.ndarray) -> csr_matrix:
    """Sparse [centres, colours]: the weight of every colour within ``radius`` of each centre."""
    found = tree.query_ball_point(centres, radius)
    lengths = np.array([len(f) for f in found], dtype=np.int64)
    indices = np.concatenate([np.asarray(f, dtype=np.int64) for f in found]) if lengths.sum() else np.zeros(0, np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return csr_matrix((weights[indices], indices, indptr), shape=(len(centres), len(weights)))


def _merged(modes: np.ndarray, support: np.ndarray, distance: float, fixed: np.ndarray) -> np.ndarray:
    """Modes by support (then colour, for a fixed order), each dropped when near a fixed or kept one."""
    order = np.lexsort((modes[:, 2], modes[:, 1], modes[:, 0], -support)) if len(modes) else np.zeros(0, int)
    kept: list[np.ndarray] = []
    for mode in modes[order]:
        taken = np.vstack([fixed, *kept]) if len(fixed) or kept else np.zeros((0, 3))
        if not len(taken) or ((taken - mode) ** 2).sum(axis=1).min() >= distance * distance:
            kept.append(mode[None])
    return np.vstack(kept) if kept else np.zeros((0, 3))


def _nearest(points: np.ndarray, modes: np.ndarray) -> np.ndarray:
    return cKDTree(modes).query(points)[1]
