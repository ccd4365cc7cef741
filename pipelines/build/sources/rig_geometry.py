"""Closed tube and box meshes for procedural rigs, with skin weights blended at the joints.

A tube follows a polyline whose segments are each bound to one bone. Rings near an inner point blend
the two bones that meet there (50/50 at the point, fading to the segment's own bone), so the skin bends
smoothly; every vertex has at most two influences and its weights sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CAP_ANGLES = np.radians([30.0, 60.0])  # rings of the rounded end caps


@dataclass(frozen=True)
class Tube:
    """A closed tube along ``points`` (M+1, 3); segment ``j`` is bound to bone ``bones[j]``.

    ``radii`` (M+1) are the radii at the points; ``bulges`` (M) add ``bulge * sin(pi t)`` along a
    segment (a head or a belly). ``start_bone`` is the bone the first point blends with (the parent
    of a limb's first bone), or None.
    """

    points: np.ndarray
    bones: tuple[int, ...]
    radii: tuple[float, ...]
    bulges: tuple[float, ...] | None = None
    start_bone: int | None = None


@dataclass(frozen=True)
class MeshArrays:
    positions: np.ndarray  # (N, 3) float64
    normals: np.ndarray  # (N, 3)
    triangles: np.ndarray  # (M, 3) int64, counter-clockwise seen from outside
    joints: np.ndarray  # (N, 4) int64, bone indices
    weights: np.ndarray  # (N, 4) float64, rows sum to 1

    @staticmethod
    def concatenate(parts: list["MeshArrays"]) -> "MeshArrays":
        offsets = np.cumsum([0] + [len(p.positions) for p in parts[:-1]])
        return MeshArrays(
            positions=np.concatenate([p.positions for p in parts]),
            normals=np.concatenate([p.normals for p in parts]),
            triangles=np.concatenate([p.triangles + o for p, o in zip(parts, offsets)]),
            joints=np.concatenate([p.joints for p in parts]),
            weights=np.concatenate([p.weights for p in parts]),
        )


def tube_mesh(tube: Tube, sides: int = 10, rings_per_segment: int = 4, blend: float = 0.35) -> MeshArrays:
    """Mesh a :class:`Tube` with rounded caps; ``blend`` is the fraction of a segment that blends."""
    centres, tangents, radii, influences = _rings(tube, rings_per_segment, blend)
    normals = _transported_normals(tangents)
    angles = 2 * np.pi * np.arange(sides) / sides
    binormals = np.cross(tangents, normals)
    # (rings, sides, 3): unit vectors from each ring's centre to its vertices
    radials = np.cos(angles)[None, :, None] * normals[:, None] + np.sin(angles)[None, :, None] * binormals[:, None]

    ring_positions = list(centres[:, None] + radii[:, None, None] * radials)
    ring_normals = list(radials)
    # rounded caps: rings that shrink towards a tip, before the first ring and after the last
    for index, sign in ((0, -1.0), (-1, 1.0)):
        axis = sign * tangents[index]
        cap_normals = [np.cos(a) * radials[index] + np.sin(a) * axis for a in _CAP_ANGLES]
        cap_positions = [centres[index] + radii[index] * n for n in cap_normals]
        if sign < 0:
            ring_positions[:0], ring_normals[:0] = cap_positions[::-1], cap_normals[::-1]
            influences[:0] = [influences[0]] * len(_CAP_ANGLES)
        else:
            ring_positions += cap_positions
            ring_normals += cap_normals
            influences += [influences[-1]] * len(_CAP_ANGLES)
    n_rings = len(ring_positions)
    tips = [centres[0] - radii[0] * tangents[0], centres[-1] + radii[-1] * tangents[-1]]
    positions = np.concatenate([np.concatenate(ring_positions), tips])
    vertex_normals = np.concatenate([np.concatenate(ring_normals), [-tangents[0], tangents[-1]]])

    k = np.arange(sides)
    k1 = (k + 1) % sides
    triangles = []
    for r in range(n_rings - 1):
        a, b = r * sides, (r + 1) * sides
        triangles += [np.stack([a + k, a + k1, b + k1], axis=1), np.stack([a + k, b + k1, b + k], axis=1)]
    start_tip, end_tip, last = n_rings * sides, n_rings * sides + 1, (n_rings - 1) * sides
    triangles.append(np.stack([np.full(sides, start_tip), k1, k], axis=1))
    triangles.append(np.stack([last + k, last + k1, np.full(sides, end_tip)], axis=1))

    joints = np.zeros((len(positions), 4), dtype=np.int64)
    weights = np.zeros((len(positions), 4), dtype=np.float64)
    per_vertex = [i for i in influences for _ in range(sides)] + [influences[0], influences[-1]]
    for vertex, influence in enumerate(per_vertex):
        for slot, (bone, weight) in enumerate(influence):
            joints[vertex, slot] = bone
            weights[vertex, slot] = weight
    return MeshArrays(positions, vertex_normals, np.concatenate(triangles), joints, weights)


def _rings(
    tube: Tube, rings_per_segment: int, blend: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[int, float]]]]:
    """Centres, unit tangents, radii and (bone, weight) influences of the rings along a tube."""
    points = np.asarray(tube.points, dtype=np.float64)
    n_segments = len(points) - 1
    if n_segments < 1 or len(tube.bones) != n_segments or len(tube.radii) != n_segments + 1:
        raise ValueError("a tube needs M+1 points, M bones and M+1 radii")
    if not 0 < blend < 0.5:
        raise ValueError("blend must be in (0, 0.5) so that at most two bones share a vertex")
    bulges = tube.bulges or (0.0,) * n_segments
    directions = np.diff(points, axis=0)
    lengths = np.linalg.norm(directions, axis=1)
    if np.any(lengths <= 0):
        raise ValueError("tube segments must have non-zero length")
    directions /= lengths[:, None]

    centres, tangents, radii, influences = [], [], [], []
    for j in range(n_segments):
        for i in range(rings_per_segment + (1 if j == n_segments - 1 else 0)):
            t = i / rings_per_segment
            centres.append(points[j] + t * (points[j + 1] - points[j]))
            tangent = directions[j - 1] + directions[j] if t == 0 and j > 0 else directions[j]  # mitre at joints
            tangents.append(tangent / np.linalg.norm(tangent))
            radii.append((1 - t) * tube.radii[j] + t * tube.radii[j + 1] + bulges[j] * np.sin(np.pi * t))
            influences.append(_ring_influence(tube, j, t, blend))
    return np.array(centres), np.array(tangents), np.array(radii), influences


def box_mesh(centre: np.ndarray, size: np.ndarray, bone: int) -> MeshArrays:
    """An axis-aligned box with flat normals (4 vertices per face), all weight on ``bone``."""
    centre, half = np.asarray(centre, dtype=np.float64), np.asarray(size, dtype=np.float64) / 2
    positions, normals, triangles = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            normal = np.zeros(3)
            normal[axis] = sign
            u, v = np.zeros(3), np.zeros(3)
            u[(axis + 1) % 3], v[(axis + 2) % 3] = 1.0, 1.0
            if sign < 0:
                u, v = v, u  # keep the corners counter-clockwise seen from outside
            base = len(positions)
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                positions.append(centre + half * (normal + du * u + dv * v))
                normals.append(normal)
            triangles += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    n = len(positions)
    joints = np.zeros((n, 4), dtype=np.int64)
    joints[:, 0] = bone
    weights = np.zeros((n, 4))
    weights[:, 0] = 1.0
    return MeshArrays(np.array(positions), np.array(normals), np.array(triangles), joints, weights)


def _ring_influence(tube: Tube, segment: int, t: float, blend: float) -> list[tuple[int, float]]:
    """(bone, weight) pairs of a ring at parameter ``t`` of ``segment``; weights sum to 1."""
    own = tube.bones[segment]
    neighbour, distance = None, None
    if t < blend:
        neighbour = tube.bones[segment - 1] if segment > 0 else tube.start_bone
        distance = t
    elif t > 1 - blend and segment < len(tube.bones) - 1:
        neighbour, distance = tube.bones[segment + 1], 1 - t
    if neighbour is None or neighbour == own:
        return [(own, 1.0)]
    share = 0.5 * (1 - distance / blend)
    return [(own, 1.0 - share), (neighbour, share)] if share > 0 else [(own, 1.0)]


def _transported_normals(tangents: np.ndarray) -> np.ndarray:
    """Ring normals that turn as little as possible along the tube (parallel transport)."""
    first = tangents[0]
    helper = np.eye(3)[int(np.argmin(np.abs(first)))]
    normal = np.cross(first, helper)
    normal /= np.linalg.norm(normal)
    normals = [normal]
    for tangent in tangents[1:]:
        normal = normal - np.dot(normal, tangent) * tangent
        normal /= np.linalg.norm(normal)
        normals.append(normal)
    return np.array(normals)
