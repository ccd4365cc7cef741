"""3D parts: each vertex takes the part the views show where it is visible, smoothed on the mesh graph.

Visibility is a depth test against the carved surface itself: the mesh's vertices are splatted into
a depth buffer per view (nearest pixel, then the minimum over 3x3 pixels so the splats close up), and
a vertex votes in a view when it lies within ``DEPTH_TOLERANCE`` of the front surface there. Its
confidence is the share of its votes that went to the winner. Vertices no view sees take their
neighbours' parts; a part that receives no vote at all is reported in ``unseen``, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import minimum_filter

from pipelines.lift.carve import pixel_lookup, project
from pipelines.lift.mesh import Mesh
from schemas.render import Camera

DEPTH_TOLERANCE = 0.03  # normalised units, about two voxels of the carving grid
SMOOTH_STEPS = 3
MAX_FILL_STEPS = 200  # rings an unseen region may span before it is left without a part


@dataclass
class PartLabels:
    labels: np.ndarray  # (N,) part id per vertex, -1 where no vote reached it
    confidence: np.ndarray  # (N,) winner's share of the vertex's own votes, 0 when unseen
    votes: np.ndarray  # (N, P) raw vote counts
    unseen: list[int]  # parts no view showed on any visible vertex


def visible(mesh: Mesh, cameras: list[Camera], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(V, N) visibility of each vertex per view, and the (V, N, 2) pixel it falls on."""
    pixels, depth = project(cameras, mesh.vertices)
    height, width = shape
    col, row = np.floor(pixels[..., 0]).astype(np.int64), np.floor(pixels[..., 1]).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (depth > 0)
    zbuffer = np.full((len(cameras), height, width), np.inf)
    v = np.broadcast_to(np.arange(len(cameras))[:, None], col.shape)
    np.minimum.at(zbuffer, (v[inside], row[inside], col[inside]), depth[inside])
    zbuffer = minimum_filter(zbuffer, size=(1, 3, 3))
    front = pixel_lookup(zbuffer, pixels, np.inf)
    return inside & (depth <= front + DEPTH_TOLERANCE), pixels


def vote_parts(mesh: Mesh, part_ids: np.ndarray, cameras: list[Camera], n_parts: int) -> PartLabels:
    """Label ``mesh`` from one frame's part images ``part_ids`` (V, H, W), -1 on background."""
    seen, pixels = visible(mesh, cameras, part_ids.shape[1:])
    shown = pixel_lookup(part_ids, pixels, -1)
    counted = seen & (shown >= 0) & (shown < n_parts)
    votes = np.zeros((len(mesh.vertices), n_parts))
    vertex = np.broadcast_to(np.arange(len(mesh.vertices))[None], shown.shape)
    np.add.at(votes, (vertex[counted], shown[counted]), 1.0)
    total = votes.sum(axis=1)
    voted = total > 0
    share = np.where(voted[:, None], votes / np.maximum(total, 1)[:, None], 0.0)
    smoothed = _fill_unvoted(mesh, share, voted)
    for _ in range(SMOOTH_STEPS):
        smoothed = 0.5 * smoothed + 0.5 * mesh.neighbour_mean(smoothed)
    reached = smoothed.sum(axis=1) > 0
    return PartLabels(
        labels=np.where(reached, smoothed.argmax(axis=1), -1),
        confidence=share.max(axis=1),
        votes=votes,
        unseen=[int(p) for p in np.flatnonzero(votes.sum(axis=0) == 0)],
    )


def _fill_unvoted(mesh: Mesh, share: np.ndarray, voted: np.ndarray) -> np.ndarray:
    """Grow the voted vertices' shares into unvoted ones, ring by ring."""
    filled, known = share.copy(), voted.copy()
    for _ in range(MAX_FILL_STEPS):
        if known.all():
            break
        grown = mesh.neighbour_mean(np.where(known[:, None], filled, 0.0))
        newly = ~known & (grown.sum(axis=1) > 0)
        if not newly.any():
            break
        filled[newly] = grown[newly] / grown[newly].sum(axis=1, keepdims=True)
        known |= newly
    return filled
