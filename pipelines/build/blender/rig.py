"""Extract what the parts rule needs from the scene, for one clip, over its sampled frames.

Normalisation is decided here, from the evaluated (deformed) world-space geometry over **every**
sampled frame: ``normalised = (world + offset) * scale`` puts the bounds' centre at the origin and their
longest side at 1, so the object stays in the unit cube [-0.5, 0.5]^3 in every frame. The parts rule
takes the reference positions shifted into [0, 1]^3.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from pipelines.build.blender import scene
from pipelines.build.blender.clips import Clip
from pipelines.build.blender.errors import RenderError
from pipelines.build.blender.frames import sample_frames
from pipelines.build.parts import RigGeometry
from schemas.assets import RejectReason


@dataclass
class SceneRig:
    """A clip's rig, sampled frames and normalisation; ``vertex_ranges[i]`` are the rows of
    ``geometry``'s per-vertex arrays that belong to ``meshes[i]``, and ``frame_positions[f]`` the
    normalised evaluated vertex positions (float32) at ``frames[f]``."""

    geometry: RigGeometry
    meshes: list[bpy.types.Object]
    vertex_ranges: list[slice]
    frames: list[float]
    frame_positions: list[np.ndarray]
    scale: float
    offset: np.ndarray


def extract_rig(clip: Clip, n_frames: int, motion_threshold: float) -> SceneRig:
    """Sample the clip's frames and read the rig over them; ``clip`` must be playing."""
    skeleton = _skeleton(clip)
    meshes, bones = _rig_meshes(skeleton)
    if not meshes:
        raise RenderError(RejectReason.no_skinned_mesh, "no mesh is skinned or attached to the skeleton")
    points_cache: dict[float, np.ndarray] = {}

    def bone_points(frame: float) -> np.ndarray:
        if frame not in points_cache:
            scene.set_frame(frame)
            points_cache[frame] = skeleton.world_points(skeleton.world_matrices()).reshape(-1, 3)
        return points_cache[frame]

    first = _stack(meshes, scene.set_frame(clip.frame_start))
    size = float(np.linalg.norm(np.ptp(first, axis=0))) if len(first) else 0.0
    if not np.isfinite(first).all() or size <= 0:
        raise RenderError(RejectReason.nan_geometry, "the geometry is empty, flat to a point, or not finite")

    def motion(a: float, b: float) -> float:
        return float(np.linalg.norm(bone_points(a) - bone_points(b), axis=1).max(initial=0.0)) / size

    frames = sample_frames(clip.frame_start, clip.frame_end, n_frames, motion, motion_threshold)
    positions, matrices = [], []
    for frame in frames:
        positions.append(_stack(meshes, scene.set_frame(frame)).astype(np.float32))  # float32: many frames
        matrices.append(skeleton.world_matrices())
    low = np.min([p.min(axis=0) for p in positions], axis=0).astype(np.float64)
    high = np.max([p.max(axis=0) for p in positions], axis=0).astype(np.float64)
    scale = 1.0 / float((high - low).max())
    offset = -(low + high) / 2.0
    diagonal = float(np.linalg.norm(high - low))

    scene.set_frame(frames[0])
    depsgraph = bpy.context.evaluated_depsgraph_get()
    areas = np.concatenate([_vertex_areas(o, depsgraph) for o in meshes]) * scale**2
    counts = [len(o.data.vertices) for o in meshes]
    starts = np.cumsum([0] + counts)
    geometry = RigGeometry(
        bone_names=skeleton.names,
        bone_parents=skeleton.parents,
        vertex_bone=np.concatenate(bones),
        vertex_area=areas,
        vertex_positions=(_stack(meshes, depsgraph) + offset) * scale + 0.5,
        bone_relative_motion=_relative_motion(skeleton, matrices) / diagonal,
    )
    return SceneRig(
        geometry=geometry,
        meshes=meshes,
        vertex_ranges=[slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])],
        frames=frames,
        frame_positions=[((p + offset) * scale).astype(np.float32) for p in positions],
        scale=scale,
        offset=offset,
    )


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
    had the bone stayed rigidly attached to its parent since the first sampled frame."""
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
