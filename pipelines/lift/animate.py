"""Per-frame rigid motion of each part: the part's rest points fitted to the same part in each frame.

The views of each frame are carved and voted like the first; then each part's first-frame vertices
are registered rigidly (ICP: nearest neighbours, Kabsch, far pairs dropped) onto that part's vertices
in the frame, starting from the previous frame's fit. Bone transforms follow from their parts.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

ICP_STEPS = 20
FAR_PAIRS = 2.5  # pairs further apart than this many times the median pair distance are dropped


def kabsch(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 4x4 rotation and translation that best map ``source`` (K, 3) onto ``target`` (K, 3)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    u, _, vt = np.linalg.svd((source - mu_s).T @ (target - mu_t))
    flip = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, flip]) @ u.T
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, mu_t - rotation @ mu_s
    return matrix


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def icp(source: np.ndarray, target: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Rigid fit of ``source`` onto the point set ``target`` (no correspondences), from ``start``."""
    tree, matrix = cKDTree(target), start.copy()
    for _ in range(ICP_STEPS):
        distance, nearest = tree.query(apply(matrix, source))
        keep = distance <= FAR_PAIRS * max(np.median(distance), 1e-6)
        if keep.sum() < 3:
            break
        update = kabsch(source[keep], target[nearest[keep]])
        if np.allclose(update, matrix, atol=1e-7):
            break
        matrix = update
    return matrix


def part_motion(
    rest: np.ndarray, rest_labels: np.ndarray, frames: list[tuple[np.ndarray, np.ndarray]], n_parts: int
) -> np.ndarray:
    """(F, P, 4, 4) rest-to-frame transforms: frame 0 is the rest (identity); ``frames`` holds each
    later frame's (vertices, labels). A part missing from a frame keeps its previous transform."""
    motion = np.tile(np.eye(4), (len(frames) + 1, n_parts, 1, 1))
    for f, (points, labels) in enumerate(frames, start=1):
        for part in range(n_parts):
            source, target = rest[rest_labels == part], points[labels == part]
            if len(source) < 3 or len(target) < 3:
                motion[f, part] = motion[f - 1, part]
                continue
            start = motion[f - 1, part].copy()
            start[:3, 3] += target.mean(axis=0) - apply(start, source).mean(axis=0)
            motion[f, part] = icp(source, target, start)
    return motion
