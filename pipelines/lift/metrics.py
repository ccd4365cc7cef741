"""The lifted rig against the true rig of the rendered sample (``pipelines.build.blender.truth``).

Everything is measured with both rigs in MagicArticulate's units: the true mesh centred on its
bounding box and scaled so its longest side spans [-1, 1].

- Parts: each lifted vertex gets the true part of its nearest point on the true surface; mIoU is the
  mean over true parts of the IoU of the vertex sets (part ids are the sample's palette ids on both
  sides, so no matching is needed), ARI is over the same labels (``models.metrics``).
- Joints: CD-J2J, CD-J2B, CD-B2B as in MagicArticulate's ``utils/eval_utils.py`` (modified from
  RigNet): symmetric Chamfer between joint sets; joints against points sampled every 0.005 along the
  other skeleton's bones, both ways, averaged; and Chamfer between the two bone samplings. A bone is
  (parent joint, child joint).
- Skinning: the true weights (summed per part) at each lifted vertex's nearest true point, in bone
  space (a merged bone's parts summed); precision and recall of influential bones (weight > 1e-4, as
  RigNet counts them) and the mean per-vertex L1 distance of the weight rows.
- Replay: the true clip through the lifted rig. Each bone's per-frame transform is the Kabsch fit of
  the true motion of the points its vertices stand on; the points are linear-blend skinned with the
  lifted weights and compared with where the true clip puts them (mean distance over later frames).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from models.metrics import adjusted_rand_index
from pipelines.lift.animate import apply, kabsch
from pipelines.lift.rig import LiftedRig
from schemas.lift import RigMetrics

if TYPE_CHECKING:  # the true rig is read with bpy; measuring it needs only its arrays
    from pipelines.build.blender.truth import TrueRig

BONE_STEP = 0.005  # MagicArticulate's sampling step along a bone, in [-1, 1] units
INFLUENTIAL = 1e-4


def unit_box(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre, scale) with ``(p - centre) * scale`` putting the bounds' longest side on [-1, 1]."""
    low, high = vertices.min(axis=0), vertices.max(axis=0)
    return (low + high) / 2, 2.0 / float((high - low).max())


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    d = cdist(a, b)
    return float((d.min(axis=0).mean() + d.min(axis=1).mean()) / 2)


def one_way(source: np.ndarray, target: np.ndarray) -> float:
    return float(cdist(source, target).min(axis=1).mean())


def sample_bones(joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Points every BONE_STEP from each parent joint to its child; the joints alone without bones."""
    samples = []
    for child, parent in enumerate(parents):
        if parent < 0:
            continue
        start, end = joints[parent], joints[child]
        steps = int(np.round(np.linalg.norm(end - start) / BONE_STEP))
        samples.append(start + (end - start) * (np.arange(steps + 1) / max(steps, 1))[:, None])
    return np.concatenate(samples) if samples else joints


def skeleton_distances(joints: np.ndarray, parents: np.ndarray, true_joints: np.ndarray,
                       true_parents: np.ndarray) -> tuple[float, float, float]:
    """(CD-J2J, CD-J2B, CD-B2B) in the units of the points given."""
    bones, true_bones = sample_bones(joints, parents), sample_bones(true_joints, true_parents)
    j2b = (one_way(joints, true_bones) + one_way(true_joints, bones)) / 2
    return chamfer(joints, true_joints), j2b, chamfer(bones, true_bones)


def nearest_true_points(rig: LiftedRig, truth: TrueRig, candidates: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Per lifted vertex: the triangle (M,) of the nearest true surface point and its barycentrics
    (M, 3), searched over the ``candidates`` triangles with the nearest centroids."""
    triangles = truth.vertices[truth.faces]
    k = min(candidates, len(triangles))
    _, near = cKDTree(triangles.mean(axis=1)).query(rig.mesh.vertices, k=k)
    near = near.reshape(len(rig.mesh.vertices), k)
    queries = np.repeat(rig.mesh.vertices, k, axis=0)
    points = trimesh.triangles.closest_point(triangles[near.ravel()], queries)
    best = np.linalg.norm(points - queries, axis=1).reshape(-1, k).argmin(axis=1)
    triangle = near[np.arange(len(near)), best]
    point = points.reshape(-1, k, 3)[np.arange(len(near)), best]
    barycentric = trimesh.triangles.points_to_barycentric(triangles[triangle], point)
    return triangle, np.clip(barycentric, 0.0, 1.0)


def rig_metrics(rig: LiftedRig, truth: TrueRig) -> RigMetrics:
    centre, scale = unit_box(truth.vertices)
    triangle, barycentric = nearest_true_points(rig, truth)
    corners = truth.faces[triangle]  # (M, 3) true vertex ids
    true_part = truth.vertex_part[corners[np.arange(len(corners)), barycentric.argmax(axis=1)]]
    labels = rig.labels.labels

    parts = [p for p in np.unique(true_part) if p >= 0]
    iou = [np.sum((labels == p) & (true_part == p)) / np.sum((labels == p) | (true_part == p)) for p in parts]
    n = int(max(labels.max(), true_part.max())) + 2  # -1 gets its own row
    contingency = np.zeros((n, n))
    np.add.at(contingency, (labels + 1, true_part + 1), 1)

    joints = (rig.skeleton.joints - centre) * scale
    true_joints = (truth.joints - centre) * scale
    j2j, j2b, b2b = skeleton_distances(joints, rig.skeleton.parents, true_joints, truth.parents)

    n_bones = len(rig.skeleton.joints)
    true_weights = np.einsum("mk,mkp->mp", barycentric, truth.part_weights[corners])
    true_weights /= true_weights.sum(axis=1, keepdims=True)
    to_bone = np.zeros((truth.part_weights.shape[1], n_bones + 1))  # last column: parts with no bone
    bone_of_part = np.where(rig.skeleton.part_bone >= 0, rig.skeleton.part_bone, n_bones)
    to_bone[np.arange(len(bone_of_part)), bone_of_part] = 1.0
    true_bone_weights = true_weights @ to_bone
    weights = np.column_stack([rig.weights, np.zeros(len(rig.weights))])
    predicted, actual = weights > INFLUENTIAL, true_bone_weights > INFLUENTIAL
    hits = (predicted & actual).sum()

    return RigMetrics(
        miou=float(np.mean(iou)),
        ari=adjusted_rand_index(contingency),
        cd_j2j=j2j,
        cd_j2b=j2b,
        cd_b2b=b2b,
        skin_precision=float(hits / max(predicted.sum(), 1)),
        skin_recall=float(hits / max(actual.sum(), 1)),
        skin_l1=float(np.abs(weights - true_bone_weights).sum(axis=1).mean()),
        replay_error=replay_error(rig, truth, corners, barycentric) * scale,
    )


def replay_error(rig: LiftedRig, truth: TrueRig, corners: np.ndarray, barycentric: np.ndarray) -> float:
    """Mean distance (normalised units) between the true clip and its replay through the lifted rig."""
    if len(truth.frames) < 2:
        return 0.0
    tracks = np.einsum("mk,fmkd->fmd", barycentric, truth.frames[:, corners])  # (F, M, 3) true points
    vertex_bone = rig.vertex_bone
    errors = []
    for f in range(1, len(tracks)):
        transforms = np.tile(np.eye(4), (len(rig.skeleton.joints), 1, 1))
        for b in range(len(transforms)):
            own = vertex_bone == b
            if own.sum() >= 3:
                transforms[b] = kabsch(tracks[0, own], tracks[f, own])
            elif rig.skeleton.parents[b] >= 0:
                transforms[b] = transforms[rig.skeleton.parents[b]]  # parents come first
        moved = np.stack([apply(t, tracks[0]) for t in transforms], axis=1)  # (M, B, 3)
        replayed = np.einsum("mb,mbd->md", rig.weights, moved)
        errors.append(np.linalg.norm(replayed - tracks[f], axis=1).mean())
    return float(np.mean(errors))
