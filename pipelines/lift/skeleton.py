"""A skeleton from 3D parts: one bone per part (or per group of parts that move as one).

- Parts whose relative motion is rigid over the frames (the child's points stay within
  ``RIGID_MOTION`` of where the parent's motion carries them) are merged into one bone group.
- Adjacent groups meet along a boundary (mesh edges whose ends lie in different groups); the joint of
  a child group is the centroid of the boundary with its parent, refined with motion as the point that
  moves least between the two (least squares over frames, pulled towards the boundary centroid).
- The tree is a maximum spanning tree of the adjacency rooted at the largest group. An edge weighs its
  boundary length, divided, with motion, by how far the two groups' motions pull the boundary centroid
  apart (a forearm resting against the torso touches it but slides along it). The root's joint is its
  centroid, or its free end when it has a single child (the base of a chain). A group that touches no
  other (an isolated piece) gets a single bone at its centroid under the root.
- A bone's tail is the mean of its children's joints, or for a leaf the part's furthest extent along
  the direction from its joint to its centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.lift.animate import apply
from pipelines.lift.mesh import Mesh

RIGID_MOTION = 0.003  # normalised units, about the ICP noise at 64 px: a child this close to rigid with its parent is merged
SLIP_FLOOR = 0.01  # normalised units: slips below this count as a hinge (noise), in the tree's edge scores
JOINT_PRIOR = 1.0  # weight of the boundary centroid against the motion in joint refinement (docs/lifting.md)


@dataclass
class Skeleton:
    joints: np.ndarray  # (B, 3) head of each bone
    tails: np.ndarray  # (B, 3)
    parents: np.ndarray  # (B,) parent bone, -1 for the root; parents come before children
    part_bone: np.ndarray  # (P,) bone of each part id, -1 for a part with no vertex
    names: list[str]  # one per bone: the part names it moves, joined with '+'
    merged: list[list[int]]  # groups of two or more parts that became one bone

    @property
    def bone_parts(self) -> list[list[int]]:
        return [[int(p) for p in np.flatnonzero(self.part_bone == b)] for b in range(len(self.joints))]


def build_skeleton(
    mesh: Mesh, labels: np.ndarray, part_names: list[str], motion: np.ndarray | None = None
) -> Skeleton:
    """The skeleton of ``mesh`` labelled by part (``labels``, -1 unlabelled); ``motion`` (F, P, 4, 4)
    rest-to-frame part transforms, when there are frames (None: no merging, no refinement)."""
    n_parts = len(part_names)
    group = _rigid_groups(mesh, labels, n_parts, motion) if motion is not None and len(motion) > 1 else np.arange(n_parts)
    vertex_group = np.where(labels >= 0, group[np.maximum(labels, 0)], -1)
    present = np.unique(vertex_group[vertex_group >= 0])
    if len(present) == 0:
        raise ValueError("no vertex has a part: nothing to build a skeleton from")
    count = np.bincount(vertex_group[vertex_group >= 0], minlength=n_parts)
    centroid = {g: mesh.vertices[vertex_group == g].mean(axis=0) for g in present}
    boundary_size, boundary_centre = _boundaries(mesh, vertex_group)

    root = int(present[np.argmax(count[present])])
    score = dict(boundary_size)
    if motion is not None and len(motion) > 1:
        # a true articulation keeps its boundary together; a limb that merely touches the body slides on it
        score = {pair: size / (_slip(motion, *pair, boundary_centre[pair]) + SLIP_FLOOR) for pair, size in boundary_size.items()}
    parent_of, order = _spanning_tree(root, present, score)
    bone_of_group = {g: i for i, g in enumerate(order)}
    joints = np.zeros((len(order), 3))
    for g in order:
        pair = (min(g, parent_of[g]), max(g, parent_of[g]))
        joints[bone_of_group[g]] = boundary_centre.get(pair, centroid[g]) if g != root else centroid[g]
        if motion is not None and len(motion) > 1 and g != root and pair in boundary_centre:
            # a group is named by its first part, whose motion stands for the group's
            joints[bone_of_group[g]] = _least_moving_point(motion, parent_of[g], g, joints[bone_of_group[g]])
    parents = np.array([bone_of_group[parent_of[g]] if g != root else -1 for g in order], np.int64)
    if np.sum(parents == 0) == 1:  # a root at the end of a chain: its joint is its free end, as a leaf's tail
        joints[0] = _far_end(mesh.vertices[vertex_group == root], joints[np.flatnonzero(parents == 0)[0]])
    tails = np.zeros_like(joints)
    for b, g in enumerate(order):
        children = np.flatnonzero(parents == b)
        tails[b] = joints[children].mean(axis=0) if len(children) else _far_end(mesh.vertices[vertex_group == g], joints[b])
    part_bone = np.array([bone_of_group.get(int(group[p]), -1) if count[group[p]] else -1 for p in range(n_parts)])
    names = ["+".join(part_names[p] for p in np.flatnonzero(part_bone == b)) for b in range(len(order))]
    merged = [members for members in ([int(p) for p in np.flatnonzero(group == g)] for g in present) if len(members) > 1]
    return Skeleton(joints, tails, parents, part_bone, names, merged)


def _rigid_groups(mesh: Mesh, labels: np.ndarray, n_parts: int, motion: np.ndarray) -> np.ndarray:
    """Group id per part (the id of the group's first part): adjacent parts that move rigidly together."""
    size, _ = _boundaries(mesh, labels)
    parent = np.arange(n_parts)

    def find(p: int) -> int:
        while parent[p] != p:
            p = parent[p]
        return p

    for a, b in sorted(size):
        points = mesh.vertices[labels == b]
        # where a's motion would carry b's points, against where b's own motion puts them
        apart = max(np.linalg.norm(apply(motion[f, a], points) - apply(motion[f, b], points), axis=1).mean()
                    for f in range(1, len(motion)))
        if apart < RIGID_MOTION:
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(p) for p in range(n_parts)])


def _boundaries(mesh: Mesh, vertex_label: np.ndarray) -> tuple[dict, dict]:
    """Per pair of adjacent labels (low, high): the number of edges between them and their midpoints' centroid."""
    a, b = mesh.edges.T
    la, lb = vertex_label[a], vertex_label[b]
    crossing = (la != lb) & (la >= 0) & (lb >= 0)
    pairs = np.sort(np.column_stack([la[crossing], lb[crossing]]), axis=1)
    middles = (mesh.vertices[a[crossing]] + mesh.vertices[b[crossing]]) / 2
    size, centre = {}, {}
    if len(pairs):
        keys, inverse, counts = np.unique(pairs, axis=0, return_inverse=True, return_counts=True)
        for k, (low, high) in enumerate(keys):
            size[(int(low), int(high))] = int(counts[k])
            centre[(int(low), int(high))] = middles[inverse.ravel() == k].mean(axis=0)
    return size, centre


def _slip(motion: np.ndarray, a: int, b: int, point: np.ndarray) -> float:
    """Mean distance over the later frames between ``point`` carried by part ``a`` and by part ``b``."""
    return float(np.mean([np.linalg.norm(apply(motion[f, a], point[None]) - apply(motion[f, b], point[None]))
                          for f in range(1, len(motion))]))


def _spanning_tree(root: int, present: np.ndarray, boundary_size: dict) -> tuple[dict, list[int]]:
    """Prim's maximum spanning tree over edge scores; unreachable groups hang from the root."""
    parent_of, order, reached = {root: root}, [root], {root}
    while True:
        best = None
        for (low, high), size in boundary_size.items():
            if (low in reached) != (high in reached):
                inside, outside = (low, high) if low in reached else (high, low)
                if best is None or size > best[0]:
                    best = (size, inside, outside)
        if best is None:
            break
        _, inside, outside = best
        parent_of[outside] = inside
        order.append(outside)
        reached.add(outside)
    for g in present:
        if int(g) not in reached:
            parent_of[int(g)] = root
            order.append(int(g))
    return parent_of, order


def _least_moving_point(motion: np.ndarray, parent: int, child: int, prior: np.ndarray) -> np.ndarray:
    """argmin_p sum_f |T_parent(f) p - T_child(f) p|^2 + JOINT_PRIOR |p - prior|^2."""
    rows, rhs = [np.sqrt(JOINT_PRIOR) * np.eye(3)], [np.sqrt(JOINT_PRIOR) * prior]
    for f in range(1, len(motion)):
        a, b = motion[f, parent], motion[f, child]
        rows.append(a[:3, :3] - b[:3, :3])
        rhs.append(b[:3, 3] - a[:3, 3])
    return np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)[0]


def _far_end(points: np.ndarray, joint: np.ndarray) -> np.ndarray:
    direction = points.mean(axis=0) - joint
    length = np.linalg.norm(direction)
    if length < 1e-9:
        return points.max(axis=0) if len(points) else joint
    direction /= length
    return joint + direction * max(float(((points - joint) @ direction).max()), 1e-3)
