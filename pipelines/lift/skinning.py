"""Harmonic skinning weights: a Laplace solve on the mesh with each bone's core vertices fixed.

The cotangent Laplacian (negative cotangents clamped to zero, so the solution keeps the maximum
principle and stays in [0, 1]) is solved once per bone with SciPy's sparse LU: vertices deep inside a
bone's parts (``CORE_RINGS`` rings away from any other bone's vertex) are fixed to 1 for their bone and
0 for the others; every other vertex takes the harmonic interpolation. Weights under ``PRUNE`` are
dropped (the solution is positive everywhere, so every bone would otherwise touch every vertex), rows
are cut to the ``TOP_K`` largest weights and normalised to sum to 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from pipelines.lift.mesh import Mesh

CORE_RINGS = 3
TOP_K = 4
PRUNE = 0.05  # far tails of the harmonic solution: 0.754 -> 0.863 influence precision, -0.02 recall (docs/lifting.md)


def cotangent_laplacian(mesh: Mesh) -> sp.csr_matrix:
    """L = D - W with W_ij = (cot a + cot b) / 2 over the two angles facing edge ij, clamped >= 0."""
    v, f = mesh.vertices, mesh.faces
    n = len(v)
    rows, cols, values = [], [], []
    for k in range(3):
        i, j, o = f[:, k], f[:, (k + 1) % 3], f[:, (k + 2) % 3]
        a, b = v[i] - v[o], v[j] - v[o]
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cot = np.einsum("ij,ij->i", a, b) / np.maximum(cross, 1e-12)
        rows += [i, j]
        cols += [j, i]
        values += [cot / 2, cot / 2]
    weights = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    weights.data = np.maximum(weights.data, 0.0) + 1e-8  # keep every edge connected
    degree = np.asarray(weights.sum(axis=1)).ravel()
    return (sp.diags(degree) - weights).tocsr()


def harmonic_weights(
    mesh: Mesh, vertex_bone: np.ndarray, n_bones: int, top_k: int = TOP_K, prune: float = PRUNE
) -> np.ndarray:
    """(N, B) weights from the bone of each vertex (``vertex_bone``, -1 where unknown)."""
    fixed = _cores(mesh, vertex_bone, n_bones)
    free = ~fixed
    boundary = np.zeros((len(vertex_bone), n_bones))
    boundary[fixed, vertex_bone[fixed]] = 1.0
    weights = boundary.copy()
    if free.any():
        laplacian = cotangent_laplacian(mesh)
        lu = splu(laplacian[free][:, free].tocsc() + 1e-10 * sp.identity(int(free.sum()), format="csc"))
        weights[free] = lu.solve(-(laplacian[free][:, fixed] @ boundary[fixed]))
    weights = np.clip(weights, 0.0, 1.0)
    weights[weights < prune] = 0.0
    if top_k < n_bones:
        cut = np.argsort(weights, axis=1)[:, :-top_k]
        np.put_along_axis(weights, cut, 0.0, axis=1)
    total = weights.sum(axis=1, keepdims=True)
    lost = total[:, 0] <= 1e-12  # a piece with no fixed vertex: follow its own bone
    weights[lost] = 0.0
    weights[lost, np.maximum(vertex_bone[lost], 0)] = 1.0
    return weights / weights.sum(axis=1, keepdims=True)


def rigid_weights(vertex_bone: np.ndarray, n_bones: int) -> np.ndarray:
    """One-hot weights: each vertex wholly on its own bone (the naive baseline)."""
    weights = np.zeros((len(vertex_bone), n_bones))
    weights[np.arange(len(vertex_bone)), np.maximum(vertex_bone, 0)] = 1.0
    return weights


def _cores(mesh: Mesh, vertex_bone: np.ndarray, n_bones: int) -> np.ndarray:
    """Vertices at least ``CORE_RINGS`` rings from any vertex of another bone (or of none); a bone with
    no such vertex keeps its innermost ones, so every bone has a boundary condition and no two fixed
    vertices of different bones share an edge."""
    a, b = mesh.edges.T
    border = np.zeros(len(vertex_bone), bool)
    differs = vertex_bone[a] != vertex_bone[b]
    border[a[differs]] = border[b[differs]] = True
    border |= vertex_bone < 0
    depth = np.where(border, 0, CORE_RINGS)  # rings from the border, capped at CORE_RINGS
    reached = border
    for ring in range(1, CORE_RINGS):
        grown = reached | ((mesh.adjacency @ reached.astype(np.float64)) > 0)
        depth[grown & ~reached] = ring
        reached = grown
    core = np.zeros(len(vertex_bone), bool)
    for bone in range(n_bones):
        own = vertex_bone == bone
        if own.any():
            core |= own & (depth >= min(CORE_RINGS, int(depth[own].max())))
    return core
