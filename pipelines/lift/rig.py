"""The whole lift of one sample: carve, vote, move, skeleton, skinning (each step in its module)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from pipelines.lift.animate import part_motion
from pipelines.lift.carve import carve
from pipelines.lift.mesh import Mesh
from pipelines.lift.skeleton import Skeleton, build_skeleton
from pipelines.lift.skinning import harmonic_weights, rigid_weights
from pipelines.lift.views import LiftInputError, PartViews
from pipelines.lift.vote import PartLabels, vote_parts
from schemas.lift import RigSummary


@dataclass
class LiftedRig:
    mesh: Mesh  # at the first frame: the rest pose
    labels: PartLabels
    skeleton: Skeleton
    weights: np.ndarray  # (N, B), rows sum to 1
    motion: np.ndarray  # (F, B, 4, 4) rest-to-frame bone transforms, frame 0 the identity
    views: PartViews
    seconds: float = 0.0

    @property
    def vertex_bone(self) -> np.ndarray:
        return np.where(self.labels.labels >= 0, self.skeleton.part_bone[np.maximum(self.labels.labels, 0)], -1)

    def summary(self) -> RigSummary:
        names = self.views.part_names
        return RigSummary(
            n_vertices=len(self.mesh.vertices),
            n_faces=len(self.mesh.faces),
            n_parts=len(names),
            n_bones=len(self.skeleton.joints),
            n_frames=len(self.motion),
            bone_names=self.skeleton.names,
            bone_parents=[int(p) for p in self.skeleton.parents],
            unseen_parts=[names[p] for p in np.flatnonzero(self.skeleton.part_bone < 0)],
            merged_parts=[[names[p] for p in group] for group in self.skeleton.merged],
            mean_confidence=float(self.labels.confidence.mean()),
            seconds=self.seconds,
        )


def lift(views: PartViews, naive: bool = False, mesh: Mesh | None = None) -> LiftedRig:
    """Rig the object ``views`` shows: ``mesh`` when given (the source asset's, an image-to-3D model's,
    in the sample's normalised object space at its first frame), else the mesh carved from the masks.
    ``naive`` is the baseline the benchmark compares with: one bone per part with its joint at the
    part's centroid, rigid nearest-part skinning, no use of motion for the skeleton."""
    started = time.perf_counter()
    masks = views.part_ids >= 0
    rest = mesh if mesh is not None else carve(masks[:, 0], views.cameras)
    labels = vote_parts(rest, views.part_ids[:, 0], views.cameras, views.n_parts)
    if (labels.labels < 0).all():
        raise LiftInputError("no view shows a part on the carved surface: the part maps are empty")
    later = []
    for f in range(1, views.part_ids.shape[1]):
        mesh = carve(masks[:, f], views.cameras)
        later.append((mesh.vertices, vote_parts(mesh, views.part_ids[:, f], views.cameras, views.n_parts).labels))
    motion = part_motion(rest.vertices, labels.labels, later, views.n_parts)
    skeleton = build_skeleton(rest, labels.labels, views.part_names, None if naive else motion)
    if naive:
        skeleton = _at_centroids(skeleton, rest, labels.labels)
    vertex_bone = np.where(labels.labels >= 0, skeleton.part_bone[np.maximum(labels.labels, 0)], -1)
    n_bones = len(skeleton.joints)
    weights = rigid_weights(vertex_bone, n_bones) if naive else harmonic_weights(rest, vertex_bone, n_bones)
    lead = [parts[0] for parts in skeleton.bone_parts]  # a merged bone moves with its first part
    return LiftedRig(rest, labels, skeleton, weights, motion[:, lead], views, time.perf_counter() - started)


def _at_centroids(skeleton: Skeleton, mesh: Mesh, labels: np.ndarray) -> Skeleton:
    joints = np.array([mesh.vertices[np.isin(labels, parts)].mean(axis=0) for parts in skeleton.bone_parts])
    tails = np.array([joints[np.flatnonzero(skeleton.parents == b)].mean(axis=0) if (skeleton.parents == b).any()
                      else skeleton.tails[b] for b in range(len(joints))])
    return Skeleton(joints, tails, skeleton.parents, skeleton.part_bone, skeleton.names, skeleton.merged)
