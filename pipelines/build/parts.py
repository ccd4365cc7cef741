"""Bones to kinematic parts: the project's rule (the SP4D paper gives none).

1. Each vertex belongs to the bone with its largest normalised skin weight (given, as ``vertex_bone``).
2. Bottom-up (children before parents), a bone's part merges into its parent's part when the part
   dominates less than ``min_surface_fraction`` of the skinned surface (a part with no surface always
   merges: it could never be drawn), or when the bone moves less than ``min_relative_motion`` relative
   to its parent over the clip. A part's surface includes the bones merged into it earlier.
3. Then, while more than ``max_parts`` remain, the part with the least surface (ties: the last in
   depth-first order) merges into its parent's part.

A root bone has no parent and no relative motion, so the motion rule skips it. A root part that is too
small (step 2) or the smallest (step 3) absorbs its largest child part (ties: the first in depth-first
order) and keeps its own root bone as the part's name; a root part with no child part left (only with
several root bones) merges into the largest other root part.

Part ids are the depth-first order of each part's root bone, so the same rig always gives the same parts.

The inputs belong to the clip, never to a render grid: motion is measured over the clip's whole range
at a fixed sampling (:func:`pipelines.build.blender.frames.motion_frames`) and the reference positions
are the clip's first frame normalised over the whole clip, so every render of a clip gets the same
parts and palette (see docs/rendering.md, "Kinematic parts").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipelines.build.colour import encode_palette
from schemas.assets import RejectReason
from schemas.errors import ReasonError
from schemas.parts import ColourRules, PartMap, PartRules

# Reference positions come from a normalisation over the clip's frames: allow rounding slack only.
_UNIT_CUBE_SLACK = 0.01


class PartsError(ReasonError, ValueError):
    """An asset whose rig cannot become parts; ``reason`` is the rejection code to record."""


@dataclass
class RigGeometry:
    """What the parts rule needs from a rigged asset, extracted from Blender by the caller.

    ``bone_names`` are in depth-first (pre-order) order, so a parent always comes before its children;
    ``bone_parents[i]`` is the index of bone i's parent, -1 for a root. ``vertex_bone[v]`` is the bone
    with vertex v's largest normalised skin weight (-1: no weight; for a mesh rigidly parented to a
    bone, that bone). ``vertex_area[v]`` is the surface area attributed to v (for example a third of
    each adjacent triangle's area). ``vertex_positions`` are at the reference pose, the clip's first
    frame (``PartMap.reference_pose == "first_frame"``), in the clip's normalised unit cube **[0, 1]^3**
    (not centred at the origin). ``bone_relative_motion[b]`` is bone b's largest displacement relative
    to its parent over the clip's motion frames, in normalised units (ignored for roots).
    """

    bone_names: list[str]
    bone_parents: list[int]
    vertex_bone: np.ndarray
    vertex_area: np.ndarray
    vertex_positions: np.ndarray
    bone_relative_motion: np.ndarray

    def __post_init__(self) -> None:
        self.vertex_bone = np.asarray(self.vertex_bone)
        self.vertex_area = np.asarray(self.vertex_area, dtype=np.float64)
        self.vertex_positions = np.asarray(self.vertex_positions, dtype=np.float64)
        self.bone_relative_motion = np.asarray(self.bone_relative_motion, dtype=np.float64)


@dataclass
class PartAssignment:
    """The parts of one rig: ``bone_to_part`` [B], ``part_root_bones`` (bone index per part id, in
    increasing order), ``vertex_part`` [N] (-1 where the vertex has no bone), ``part_area`` [P]."""

    bone_to_part: np.ndarray
    part_root_bones: list[int]
    vertex_part: np.ndarray
    part_area: np.ndarray

    @property
    def n_parts(self) -> int:
        return len(self.part_root_bones)


def kinematic_parts(rig: RigGeometry, rules: PartRules) -> PartAssignment:
    """Group the bones of ``rig`` into at most ``rules.max_parts`` kinematic parts (see module doc).

    Raises ValueError when ``rig`` breaks its own contract (lengths, order, cube), and
    :class:`PartsError` with a reason code for assets that cannot give parts.
    """
    _validate(rig)
    parents = np.asarray(rig.bone_parents, dtype=np.int64)
    n_bones = len(parents)
    weighted = rig.vertex_bone >= 0
    bone_area = np.bincount(rig.vertex_bone[weighted], weights=rig.vertex_area[weighted], minlength=n_bones)
    total = float(bone_area.sum())
    if total <= 0.0:
        raise PartsError(RejectReason.too_few_parts, "no surface is skinned to any bone")

    groups = _Groups(parents, bone_area)
    motion = rig.bone_relative_motion

    def too_small(rep: int) -> bool:
        return groups.area[rep] <= 0.0 or groups.area[rep] / total < rules.min_surface_fraction

    # Step 2, non-root bones: reverse depth-first order visits every child before its parent, and the
    # parent is still its own group when its child is visited.
    for bone in range(n_bones - 1, -1, -1):
        parent = parents[bone]
        if parent >= 0 and (too_small(bone) or motion[bone] < rules.min_relative_motion):
            groups.merge(bone, into=parent)
    for root in np.flatnonzero(parents < 0):
        if groups.alive[root] and too_small(root):
            groups.merge_root(root)

    # Step 3.
    while groups.count > rules.max_parts:
        reps = groups.representatives()
        smallest = reps[np.lexsort((-reps, groups.area[reps]))[0]]
        if parents[smallest] >= 0:
            groups.merge(smallest, into=groups.owner[parents[smallest]])
        else:
            groups.merge_root(smallest)

    roots = groups.representatives()
    part_of_rep = np.full(n_bones, -1, dtype=np.int64)
    part_of_rep[roots] = np.arange(len(roots))
    bone_to_part = part_of_rep[groups.owner]
    vertex_part = np.where(weighted, bone_to_part[np.maximum(rig.vertex_bone, 0)], -1)
    return PartAssignment(
        bone_to_part=bone_to_part,
        part_root_bones=roots.tolist(),
        vertex_part=vertex_part,
        part_area=groups.area[roots].copy(),
    )


def part_centroids(rig: RigGeometry, parts: PartAssignment) -> np.ndarray:
    """Area-weighted surface centroid [P, 3] of each part at the reference pose, in the unit cube."""
    weighted = parts.vertex_part >= 0
    ids = parts.vertex_part[weighted]
    area = rig.vertex_area[weighted]
    positions = rig.vertex_positions[weighted]
    sums = np.stack(
        [np.bincount(ids, weights=area * positions[:, axis], minlength=parts.n_parts) for axis in range(3)], axis=1
    )
    return np.clip(sums / parts.part_area[:, None], 0.0, 1.0)


def build_part_map(
    rig: RigGeometry,
    rules: PartRules,
    colours: ColourRules,
    motion_frames: Sequence[float] = (),
    reference_scale: float = 1.0,
    reference_offset: Sequence[float] = (0.0, 0.0, 0.0),
) -> tuple[PartMap, np.ndarray]:
    """The PartMap of a rig (every bone mapped, palette from the part centroids) and per-vertex part
    ids. Recorded with it: the frames the rig's motion was measured at, and the normalisation that
    put its reference positions into the unit cube (``(world + offset) * scale + 0.5``)."""
    parts = kinematic_parts(rig, rules)
    centroids = part_centroids(rig, parts)
    palette = encode_palette(centroids, colours)
    part_map = PartMap(
        bone_to_part={name: int(part) for name, part in zip(rig.bone_names, parts.bone_to_part, strict=True)},
        part_names=[rig.bone_names[b] for b in parts.part_root_bones],
        palette=palette.tolist(),
        centroids=centroids.tolist(),
        reference_pose="first_frame",
        reference_scale=float(reference_scale),
        reference_offset=[float(x) for x in reference_offset],
        motion_frames=[float(f) for f in motion_frames],
        bone_motion=[float(m) for m in rig.bone_relative_motion],
    )
    return part_map, parts.vertex_part


def vertex_parts(part_map: PartMap, bone_names: Sequence[str], vertex_bone: np.ndarray) -> np.ndarray:
    """Per-vertex part ids [N] under an existing part map (-1 where a vertex has no bone): how a
    stored decision is applied to a freshly loaded rig. Raises :class:`PartsError` when the map was
    made for other bones."""
    if list(part_map.bone_to_part) != list(bone_names):
        raise PartsError(
            RejectReason.render_failed,
            f"the part map names bones {list(part_map.bone_to_part)[:6]}... but the rig has {list(bone_names)[:6]}...: "
            "a stored part decision that does not belong to this asset; delete its row from the parts table",
        )
    bone_to_part = np.array([part_map.bone_to_part[name] for name in bone_names], dtype=np.int64)
    vertex_bone = np.asarray(vertex_bone)
    return np.where(vertex_bone >= 0, bone_to_part[np.maximum(vertex_bone, 0)], -1)


class _Groups:
    """Bones grouped into parts. A group is named by its representative: its topmost bone, or, once
    a root group has joined another root group, that group's root."""

    def __init__(self, parents: np.ndarray, bone_area: np.ndarray):
        self.parents = parents
        self.owner = np.arange(len(parents))
        self.area = bone_area.astype(np.float64).copy()
        self.alive = np.ones(len(parents), dtype=bool)

    @property
    def count(self) -> int:
        return int(self.alive.sum())

    def representatives(self) -> np.ndarray:
        return np.flatnonzero(self.alive)

    def merge(self, rep: int, into: int) -> None:
        self.owner[self.owner == rep] = into
        self.area[into] += self.area[rep]
        self.area[rep] = 0.0
        self.alive[rep] = False

    def merge_root(self, root: int) -> None:
        """A root group too small to stand alone: absorb its largest child group, else join the
        largest other root group."""
        reps = self.representatives()
        children = reps[(self.parents[reps] >= 0) & (self.owner[np.maximum(self.parents[reps], 0)] == root)]
        if len(children):
            self.merge(int(_largest(children, self.area)), into=root)
            return
        other_roots = reps[(self.parents[reps] < 0) & (reps != root)]
        if len(other_roots):
            self.merge(root, into=int(_largest(other_roots, self.area)))


def _largest(reps: np.ndarray, area: np.ndarray) -> int:
    """The group with the most surface; ties go to the first in depth-first order."""
    return int(reps[np.lexsort((reps, -area[reps]))[0]])


def _validate(rig: RigGeometry) -> None:
    n_bones = len(rig.bone_names)
    if n_bones == 0:
        raise PartsError(RejectReason.too_few_bones, "the rig has no bones")
    if len(rig.bone_parents) != n_bones or np.shape(rig.bone_relative_motion) != (n_bones,):
        raise ValueError(
            f"{n_bones} bone names but {len(rig.bone_parents)} parents and "
            f"{np.shape(rig.bone_relative_motion)} relative motions"
        )
    if len(set(rig.bone_names)) != n_bones:
        raise PartsError(RejectReason.bad_weights, "duplicate bone names make the skin ambiguous")
    _validate_depth_first(rig.bone_parents)
    if rig.vertex_bone.ndim != 1 or not np.issubdtype(rig.vertex_bone.dtype, np.integer):
        raise ValueError(
            f"vertex_bone must be a 1-D integer array, got {rig.vertex_bone.dtype} {rig.vertex_bone.shape}"
        )
    n_vertices = len(rig.vertex_bone)
    if rig.vertex_area.shape != (n_vertices,) or rig.vertex_positions.shape != (n_vertices, 3):
        raise ValueError(
            f"{n_vertices} vertex bones but vertex_area {rig.vertex_area.shape} "
            f"and vertex_positions {rig.vertex_positions.shape}"
        )
    bad = (rig.vertex_bone < -1) | (rig.vertex_bone >= n_bones)
    if bad.any():
        raise PartsError(RejectReason.bad_weights, f"{int(bad.sum())} vertices weighted to bones that do not exist")
    for name, values in (
        ("vertex_area", rig.vertex_area),
        ("vertex_positions", rig.vertex_positions),
        ("bone_relative_motion", rig.bone_relative_motion),
    ):
        if not np.isfinite(values).all():
            raise PartsError(RejectReason.nan_geometry, f"{name} contains NaN or infinity")
    if (rig.vertex_area < 0).any():
        raise ValueError("vertex_area must not be negative")
    if n_vertices and (
        rig.vertex_positions.min() < -_UNIT_CUBE_SLACK or rig.vertex_positions.max() > 1.0 + _UNIT_CUBE_SLACK
    ):
        raise ValueError(
            f"vertex_positions span [{rig.vertex_positions.min():.3f}, {rig.vertex_positions.max():.3f}]: "
            "they must be in the normalised unit cube [0, 1]^3"
        )


def _validate_depth_first(parents: list[int]) -> None:
    """Pre-order means each bone's parent is the previous bone or one of that bone's ancestors."""
    for bone, parent in enumerate(parents):
        if parent == -1:
            continue
        ancestor = bone - 1
        while ancestor >= 0 and ancestor != parent:
            ancestor = parents[ancestor]
        if ancestor != parent or not 0 <= parent < bone:
            raise ValueError(f"bones are not in depth-first order: bone {bone} has parent {parent}")
