"""The triangle mesh the lift works on, and the graph queries every step shares."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


@dataclass
class Mesh:
    """``vertices`` (N, 3) float64 in the sample's normalised object space, ``faces`` (M, 3) int64."""

    vertices: np.ndarray
    faces: np.ndarray

    @cached_property
    def edges(self) -> np.ndarray:
        """(E, 2) unique undirected edges, smaller index first."""
        pairs = np.concatenate([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]])
        return np.unique(np.sort(pairs, axis=1), axis=0)

    @cached_property
    def adjacency(self) -> sp.csr_matrix:
        """Symmetric 0/1 vertex adjacency."""
        n, (a, b) = len(self.vertices), self.edges.T
        ones = np.ones(2 * len(a))
        return sp.csr_matrix((ones, (np.concatenate([a, b]), np.concatenate([b, a]))), shape=(n, n))

    def neighbour_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of ``values`` (N, ...) over each vertex's neighbours (a vertex without any keeps its own)."""
        degree = np.asarray(self.adjacency.sum(axis=1)).ravel()
        flat = values.reshape(len(values), -1)
        summed = self.adjacency @ flat
        mean = np.where(degree[:, None] > 0, summed / np.maximum(degree, 1)[:, None], flat)
        return mean.reshape(values.shape)

    def components(self) -> np.ndarray:
        """Connected-component label per vertex."""
        return connected_components(self.adjacency, directed=False)[1]

    def keep_vertices(self, keep: np.ndarray) -> "Mesh":
        """The sub-mesh of the faces whose three vertices are kept, re-indexed."""
        keep = np.asarray(keep, bool)
        faces = self.faces[keep[self.faces].all(axis=1)]
        index = np.full(len(self.vertices), -1, np.int64)
        index[keep] = np.arange(int(keep.sum()))
        return Mesh(self.vertices[keep], index[faces])
