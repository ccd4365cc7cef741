"""Probe: what Blender finds in one asset file, as a :class:`~schemas.assets.ProbeReport`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import bpy
import numpy as np

from pipelines.build.blender import clips as clip_ops
from pipelines.build.blender import gltf_scan
from pipelines.build.blender import scene
from pipelines.build.blender.errors import BlenderStageError
from pipelines.build.blender.frames import motion_frames
from pipelines.build.blender.session import BlenderSession
from schemas.assets import BoneInfo, ClipInfo, ProbeReport, RejectReason


def probe_asset(session: BlenderSession, path: str | Path, sha256: str) -> ProbeReport:
    """Load ``path`` and describe it. Never raises: a file that cannot be read gives ``ok=False``
    with a reason code, and the session's log keeps what Blender printed."""
    started = time.perf_counter()
    try:
        session.load(path)
        with session.capture():
            report = _inspect(Path(path), sha256)
    except BlenderStageError as exc:
        report = ProbeReport(sha256=sha256, ok=False, reason=exc.reason, detail=exc.detail)
    except Exception as exc:  # noqa: BLE001 - a probe must describe, never lose, a bad asset
        detail = f"probe failed: {type(exc).__name__}: {exc}"[:500]
        report = ProbeReport(sha256=sha256, ok=False, reason=RejectReason.import_error, detail=detail)
    report.seconds = time.perf_counter() - started
    return report


def _inspect(path: Path, sha256: str) -> ProbeReport:
    suffix = path.suffix.lower()
    arms = scene.armatures()
    skeletons = [scene.skeleton_from_armature(a) for a in arms]
    skeleton_of = {s.armature.as_pointer(): i for i, s in enumerate(skeletons)}
    bones = [
        BoneInfo(
            name=b.name,
            parent=b.parent.name if b.parent else None,
            head=[float(x) for x in b.head_local],
            tail=[float(x) for x in b.tail_local],
        )
        for arm in arms
        for b in scene.depth_first_bones(arm)
    ]
    names = [b.name for b in bones]
    meshes = scene.renderable_meshes()
    n_skinned = n_rigid = n_unweighted = 0
    max_error = 0.0
    has_nan = suffix in (".glb", ".gltf") and gltf_scan.count_nonfinite(path) > 0
    mesh_bones: list[tuple[int, set[int]]] = []  # (skeleton, bones driving the mesh), to count skeletons
    for obj in meshes:
        positions = np.empty(len(obj.data.vertices) * 3, dtype=np.float32)
        obj.data.vertices.foreach_get("co", positions)
        has_nan |= bool(np.isnan(positions).any())
        armature = scene.skin_armature(obj)
        s = skeleton_of.get(armature.as_pointer()) if armature is not None else None
        groups = scene.bone_group_indices(obj, skeletons[s].names, armature) if s is not None else {}
        if groups:
            dominant, sums, nan_weights = scene.skin_weights(obj, groups)
            has_nan |= nan_weights
            weighted = sums > 0
            if weighted.any():
                n_skinned += 1
                n_unweighted += int((~weighted).sum())
                max_error = max(max_error, float(np.abs(sums[weighted] - 1.0).max()))
                mesh_bones.append((s, set(np.unique(dominant[weighted]).tolist())))
                continue
        if obj.parent is not None and obj.parent_type == "BONE":
            n_rigid += 1
        for s, skeleton in enumerate(skeletons):
            bone = scene.attachment(obj, skeleton)
            if bone is not None:
                mesh_bones.append((s, {bone}))

    clips = clip_ops.list_clips()
    if not skeletons:
        nodes = {id_.as_pointer(): id_ for c in clips for id_, _ in c.targets if isinstance(id_, bpy.types.Object)}
        if nodes:
            skeletons = [scene.skeleton_from_nodes(list(nodes.values()))]
    low, high = _reference_bounds(meshes, clips)
    has_nan |= not (np.isfinite(low).all() and np.isfinite(high).all())
    diagonal = float(np.linalg.norm(high - low)) if not has_nan else 0.0
    clip_infos = [
        ClipInfo(
            name=c.name,
            frame_start=math.floor(c.frame_start),
            frame_end=math.ceil(c.frame_end),
            fps=c.fps,
            motion=_clip_motion(c, skeletons, diagonal),
        )
        for c in clips
    ]
    return ProbeReport(
        sha256=sha256,
        ok=True,
        n_armatures=scene.count_skeletons(skeletons, mesh_bones) if arms else 0,
        bones=bones,
        n_meshes=len(meshes),
        n_skinned_meshes=n_skinned,
        n_rigid_children=n_rigid,
        n_vertices=sum(len(o.data.vertices) for o in meshes),
        n_faces=sum(len(o.data.polygons) for o in meshes),
        clips=clip_infos,
        max_weight_sum_error=max_error,
        n_unweighted_vertices=n_unweighted,
        has_nan=has_nan,
        duplicate_bone_names=len(set(names)) != len(names),
        bounds_min=[float(x) for x in np.nan_to_num(low)],
        bounds_max=[float(x) for x in np.nan_to_num(high)],
    )


def _reference_bounds(meshes: list[bpy.types.Object], clips: list[clip_ops.Clip]) -> tuple[np.ndarray, np.ndarray]:
    """World bounds of the evaluated (posed) geometry at the first frame of every clip (or the current
    frame when there is none): the size that clip motion is measured against."""
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for clip in clips or [None]:
        if clip is not None:
            clip_ops.play(clip)
            depsgraph = scene.set_frame(clip.frame_start)
        else:
            depsgraph = bpy.context.evaluated_depsgraph_get()
        for obj in meshes:
            points = scene.evaluated_positions(obj, depsgraph)
            if len(points):
                low = np.minimum(low, points.min(axis=0))
                high = np.maximum(high, points.max(axis=0))
    if not np.isfinite(low).all():  # no vertices at all
        return np.zeros(3), np.zeros(3)
    return low, high


def _clip_motion(clip: clip_ops.Clip, skeletons: list[scene.Skeleton], diagonal: float) -> float:
    """Largest displacement of any bone point from its first-frame position, over the clip, as a
    fraction of the reference bounds diagonal. Measured at the same fixed sampling the parts are
    decided at (every whole frame and key), so the filter and the parts see the same motion."""
    if not skeletons or diagonal <= 0:
        return 0.0
    clip_ops.play(clip)
    first = None
    largest = 0.0
    for frame in motion_frames(clip.frame_start, clip.frame_end, clip_ops.key_times(clip)):
        scene.set_frame(float(frame))
        points = np.concatenate([s.world_points(s.world_matrices()).reshape(-1, 3) for s in skeletons])
        if first is None:
            first = points
        largest = max(largest, float(np.linalg.norm(points - first, axis=1).max()))
    return largest / diagonal
