"""A mesh from the alpha masks: space carving over the stored cameras, marching cubes, light clean-up.

A voxel of a regular grid over the normalised object's box survives when it projects inside the
object's mask in every view (a voxel seen outside any image is carved too: renders keep the whole
object in frame). The occupancy is blurred by a fraction of a voxel and meshed at level 0.5 with
scikit-image's marching cubes, then small pieces are dropped and the surface smoothed (Taubin, so it
does not shrink). The result is the visual hull: concavities that no silhouette shows (the inside of
a cup, the gap between legs seen only from the front) stay filled (``docs/lifting.md``).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.measure import marching_cubes

from pipelines.lift.mesh import Mesh
from pipelines.lift.views import LiftInputError
from schemas.render import Camera

GRID = 64  # voxels per side: about one voxel per pixel at the 64 px renders the tests use
HALF_EXTENT = 0.55  # normalised objects lie in [-0.5, 0.5]^3; a margin keeps the hull closed
MIN_PIECE = 0.05  # pieces under this fraction of the largest one's vertices are noise
SMOOTH_STEPS = 4


def project(cameras: list[Camera], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (V, N, 2) and depths (V, N) of points (N, 3) in every camera."""
    extrinsics = np.stack([np.asarray(c.extrinsics) for c in cameras])
    intrinsics = np.stack([np.asarray(c.intrinsics) for c in cameras])
    in_camera = np.einsum("vij,nj->vni", extrinsics[:, :3, :3], points) + extrinsics[:, None, :3, 3]
    pixels = np.einsum("vij,vnj->vni", intrinsics, in_camera)
    depth = in_camera[..., 2]
    return pixels[..., :2] / np.where(np.abs(depth) > 1e-9, depth, 1e-9)[..., None], depth


def pixel_lookup(images: np.ndarray, pixels: np.ndarray, fill) -> np.ndarray:
    """``images`` (V, H, W) read at the nearest pixel of ``pixels`` (V, N, 2); ``fill`` outside."""
    views, height, width = images.shape
    col, row = np.floor(pixels[..., 0]).astype(np.int64), np.floor(pixels[..., 1]).astype(np.int64)
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    values = np.full(col.shape, fill, dtype=images.dtype)
    v = np.broadcast_to(np.arange(views)[:, None], col.shape)
    values[inside] = images[v[inside], row[inside], col[inside]]
    return values


def voxel_centres(grid: int = GRID, half_extent: float = HALF_EXTENT) -> tuple[np.ndarray, float]:
    """(grid^3, 3) centres in x-major order and the voxel size."""
    size = 2 * half_extent / grid
    axis = -half_extent + size * (np.arange(grid) + 0.5)
    xx, yy, zz = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.column_stack([xx.ravel(), yy.ravel(), zz.ravel()]), size


def carve(masks: np.ndarray, cameras: list[Camera], grid: int = GRID) -> Mesh:
    """The cleaned visual hull of boolean ``masks`` (V, H, W) seen by ``cameras``."""
    centres, size = voxel_centres(grid)
    pixels, depth = project(cameras, centres)
    seen = pixel_lookup(np.asarray(masks, bool), pixels, False) & (depth > 0)
    occupied = seen.all(axis=0).reshape(grid, grid, grid)
    if occupied.sum() < 8:
        raise LiftInputError(
            f"the masks of the {len(cameras)} views agree on {int(occupied.sum())} voxels only: "
            "the cameras do not match the images (wrong sample.json?)"
        )
    volume = np.pad(gaussian_filter(occupied.astype(np.float32), 0.6), 1)
    vertices, faces, _, _ = marching_cubes(volume, level=0.5, spacing=(size, size, size))
    vertices = vertices - HALF_EXTENT - size + size / 2  # padding and voxel centres back to object space
    mesh = _drop_small_pieces(Mesh(vertices.astype(np.float64), faces.astype(np.int64)))
    return taubin_smooth(mesh, SMOOTH_STEPS)


def _drop_small_pieces(mesh: Mesh) -> Mesh:
    labels = mesh.components()
    counts = np.bincount(labels)
    return mesh.keep_vertices(counts[labels] >= MIN_PIECE * counts.max())


def taubin_smooth(mesh: Mesh, steps: int, shrink: float = 0.5, inflate: float = -0.53) -> Mesh:
    """Laplacian smoothing in pairs of steps that shrink then inflate, so the volume stays."""
    vertices = mesh.vertices.copy()
    for _ in range(steps):
        for factor in (shrink, inflate):
            vertices += factor * (mesh.neighbour_mean(vertices) - vertices)
    return Mesh(vertices, mesh.faces)
