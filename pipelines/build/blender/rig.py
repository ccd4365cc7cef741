"""Read a clip's rig from the scene, decide its parts from the whole clip, and pick the grid's frames.

Two passes over the clip, kept apart on purpose:

- :func:`decide_clip_parts` belongs to the clip alone. It evaluates the deformed world-space geometry
  and the skeleton at the fixed motion sampling (:func:`~pipelines.build.blender.frames.motion_frames`:
  every whole frame and every key of the clip, at most 256), and hands the parts rule each bone's
  motion relative to its parent and the reference pose (the clip's first frame), both in the clip's
  normalisation: the bounds over those frames centred at the origin, their longest side 1, shifted
  into [0, 1]^3 for the centroids. Its :class:`~schemas.parts.PartMap` is the same for every render
  of the clip, so it can be stored and reused.
- :func:`grid_frames` picks the frames a render grid shows (:func:`~pipelines.build.blender.frames.sample_frames`)
  and normalises the render over them: the bounds of the evaluated (deformed) world-space vertices over
  every rendered frame, ``normalised = (world + offset) * scale``, centre at the origin and longest side
  1, so the object stays in [-0.5, 0.5]^3 and fills the frame in every render.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from pipelines.build.blender import clips as clip_ops
from pipelines.build.blender import scene
from pipelines.build.blender.clips import Clip
from pipelines.build.blender.errors import RenderError
from pipelines.build.blender.frames import motion_frames, sample_frames
from pipelines.build.parts import PartsError, RigGeometry, build_part_map
from schemas.assets import RejectReason
from schemas.parts import ColourRules, PartMap, PartRules


@dataclass
class SceneRig:
    """The loaded asset's rig for one clip: its skeleton, the meshes it moves, and per vertex (rows
    of all meshes stacked) the bone it follows most; ``vertex_ranges[i]`` are ``meshes[i]``'s rows."""

    skeleton: scene.Skeleton
    meshes: list[bpy.types.Object]
    vertex_bone: np.ndarray
    vertex_ranges: list[slice]


@dataclass
class GridFrames:
    """The frames a render grid shows, the grid's normalisation (``normalised = (world + offset) *
    scale``) and the normalised evaluated vertex positions (float32) at each frame."""

    frames: list[float]
    positions: list[np.ndarray]
    scale: float
    offset: np.ndarray


def scene_rig(clip: Clip) -> SceneRig:
    """The rig that ``clip`` animates; ``clip`` must be playing."""
    skeleton = _skeleton(clip)
    meshes, bones = _rig_meshes(skeleton)
    if not meshes:
        raise RenderError(RejectReason.no_skinned_mesh, "no mesh is skinned or attached to the skeleton")
    starts = np.cumsum([0] + [len(o.data.vertices) for o in meshes])
    return SceneRig(
        skeleton=skeleton,
        meshes=meshes,
        vertex_bone=np.concatenate(bones),
        vertex_ranges=[slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])],
    )


def decide_clip_parts(rig: SceneRig, clip: Clip, parts: PartRules, colours: ColourRules) -> PartMap:
    """The clip's part map and palette, from the whole clip at the fixed motion sampling.

    Raises :class:`~pipelines.build.parts.PartsError` (``clip_too_short``) for a clip that spans a
    single frame: with one pose there is no motion to tell the parts apart.
    """
    frames = motion_frames(clip.frame_start, clip.frame_end, clip_ops.key_times(clip))
    if len(frames) < 2:
        raise PartsError(
            RejectReason.clip_too_short,
            f"clip {clip.name!r} spans a single frame ({clip.frame_start:g}): a kinematic part is a group of bones "
            "that moves relative to its parent over the clip, which one pose cannot show",
        )
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    matrices = []
    for frame in frames:
        positions = _stack(rig.meshes, scene.set_frame(frame))
        low, high = np.minimum(low, positions.min(axis=0)), np.maximum(high, positions.max(axis=0))
        matrices.append(rig.skeleton.world_matrices())
    scale, offset = _normalisation(low, high)

    depsgraph = scene.set_frame(frames[0])  # the reference pose: the clip's first frame
    geometry = RigGeometry(
        bone_names=rig.skeleton.names,
        bone_parents=rig.skeleton.parents,
        vertex_bone=rig.vertex_bone,
        vertex_area=np.concatenate([_vertex_areas(o, depsgraph) for o in rig.meshes]) * scale**2,
        vertex_positions=(_stack(rig.meshes, depsgraph) + offset) * scale + 0.5,
        bone_relative_motion=_relative_motion(rig.skeleton, matrices) * scale,
    )
    part_map, _ = build_part_map(geometry, parts, colours, frames, scale, offset)
    return part_map


def grid_frames(rig: SceneRig, clip: Clip, n_frames: int, motion_threshold: float) -> GridFrames:
    """The render grid's ``n_frames`` frames, normalised over themselves (module doc). The stride
    grows until every pair of consecutive frames moves some bone point by ``motion_threshold`` of
    the diagonal of the clip's first-frame bounds (see :func:`sample_frames`)."""
    first = _stack(rig.meshes, scene.set_frame(clip.frame_start))
    size = float(np.linalg.norm(np.ptp(first, axis=0))) if len(first) else 0.0
    if not np.isfinite(first).all() or size <= 0:
        raise RenderError(RejectReason.nan_geometry, "the geometry is empty, flat to a point, or not finite")
    points_cache: dict[float, np.ndarray] = {}

    def bone_points(frame: float) -> np.ndarray:
        if frame not in points_cache:
            scene.set_frame(frame)
            points_cache[frame] = rig.skeleton.world_points(rig.skeleton.world_matrices()).reshape(-1, 3)
        return points_cache[frame]

    def motion(a: float, b: float) -> float:
        return float(np.linalg.norm(bone_points(a) - bone_points(b), axis=1).max(initial=0.0)) / size

    frames = sample_frames(clip.frame_start, clip.frame_end, n_frames, motion, motion_threshold)
    # float32: a grid can hold many frames of a large mesh
    positions = [_stack(rig.meshes, scene.set_frame(f)).astype(np.float32) for f in frames]
    low = np.min([p.min(axis=0) for p in positions], axis=0).astype(np.float64)
    high = np.max([p.max(axis=0) for p in positions], axis=0).astype(np.float64)
    scale, offset = _normalisation(low, high)
    return GridFrames(
        frames=frames,
        positions=[((p + offset) * scale).astype(np.float32) for p in positions],
        scale=scale,
        offset=offset,
    )


def _normalisation(low: np.ndarray, high: np.ndarray) -> tuple[float, np.ndarray]:
    """(scale, offset) that put the bounds' centre at the origin and their longest side at 1."""
    extent = float((high - low).max())
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or extent <= 0:
        raise RenderError(RejectReason.nan_geometry, "the geometry is empty, flat to a point, or not finite")
    return 1.0 / extent, -(low + high) / 2.0


def _skeleton(clip: Clip) -> scene.Skeleton:
    arms = scene.armatures()
    if len(arms) > 1:
        raise RenderError(RejectReason.multiple_armatures, f"{len(arms)} armatures: {[a.name for a in arms]}")
    if arms:
        return scene.skeleton_from_armature(arms[0])
    nodes = [id_ for id_, _ in clip.targets if isinstance(id_, bpy.types.Object)]
    if not nodes:
        raise RenderError(RejectReason.no_armature, f"no armature, and clip {clip.name!r} moves no object")
    moving = scene.skeleton_from_nodes(nodes)
    static = any(scene.attachment(o, moving) is None for o in scene.renderable_meshes())
    return scene.skeleton_from_nodes(nodes, static_root=True) if static else moving


def _rig_meshes(skeleton: scene.Skeleton) -> tuple[list[bpy.types.Object], list[np.ndarray]]:
    """The meshes the skeleton moves, each with its vertices' bones: the dominant skin weight, else
    the bone the mesh hangs from (rigid children; unweighted skin vertices), else the first root."""
    meshes, bones = [], []
    for obj in scene.renderable_meshes():
        attached = scene.attachment(obj, skeleton)
        groups = {}
        if skeleton.armature is not None and scene.skin_armature(obj) == skeleton.armature:
            groups = scene.bone_group_indices(obj, skeleton.names, skeleton.armature)
        if attached is None and not groups:
            continue
        vertex_bone = np.full(len(obj.data.vertices), attached if attached is not None else 0, dtype=np.int64)
        if groups:
            dominant, _, _ = scene.skin_weights(obj, groups)
            vertex_bone = np.where(dominant >= 0, dominant, vertex_bone)
        meshes.append(obj)
        bones.append(vertex_bone)
    return meshes, bones


def _stack(meshes: list[bpy.types.Object], depsgraph: bpy.types.Depsgraph) -> np.ndarray:
    positions = []
    for obj in meshes:
        points = scene.evaluated_positions(obj, depsgraph)
        if len(points) != len(obj.data.vertices):
            raise RenderError(
                RejectReason.render_failed,
                f"mesh {obj.name!r}: its modifiers change the vertex count ({len(obj.data.vertices)} -> {len(points)})",
            )
        positions.append(points)
    return np.concatenate(positions)


def _vertex_areas(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> np.ndarray:
    """A third of each adjacent triangle's world-space area, per vertex (evaluated pose)."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.data
    mesh.calc_loop_triangles()
    triangles = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int64)
    mesh.loop_triangles.foreach_get("vertices", triangles)
    triangles = triangles.reshape(-1, 3)
    world = scene.evaluated_positions(obj, depsgraph)
    a, b, c = (world[triangles[:, i]] for i in range(3))
    tri_area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    return np.bincount(triangles.ravel(), weights=np.repeat(tri_area / 3.0, 3), minlength=len(world))


def _relative_motion(skeleton: scene.Skeleton, matrices: list[np.ndarray]) -> np.ndarray:
    """Per bone, the largest displacement (world units) of its points away from where they would be
    had the bone stayed rigidly attached to its parent since the first of the frames ``matrices``
    were taken at."""
    first = matrices[0]
    first_points = skeleton.world_points(first)  # [B, 3, 3]
    first_anchor = skeleton.anchor_matrices(first)
    largest = np.zeros(len(skeleton.names))
    for world in matrices[1:]:
        anchor = skeleton.anchor_matrices(world)
        carried = anchor @ np.linalg.inv(first_anchor)  # the parent's motion since the first frame
        homogeneous = np.concatenate([first_points, np.ones(first_points.shape[:2] + (1,))], axis=2)
        expected = np.einsum("bij,bkj->bki", carried, homogeneous)[..., :3]
        actual = skeleton.world_points(world)
        largest = np.maximum(largest, np.linalg.norm(actual - expected, axis=2).max(axis=1))
    return largest
