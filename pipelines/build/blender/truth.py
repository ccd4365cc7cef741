"""The true rig behind a rendered sample, for measuring what the lift (``pipelines.lift``) recovers.

Read from the scene right after :func:`~pipelines.build.blender.render.render_grid`, in the render's
normalised object space (``(world + offset) * scale``, Blender's Z up, the frame the cameras use):
the mesh at the grid's first frame, its vertices at every grid frame, each vertex's kinematic part
(the render's part map) and skin weights summed per part, and one joint per part: the head of the
part's topmost bone, parented to the part of that bone's parent.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import bpy
import numpy as np

from pipelines.build.blender import clips as clip_ops
from pipelines.build.blender import scene
from pipelines.build.blender.render import RenderedGrid
from pipelines.build.blender.rig import scene_rig
from pipelines.build.blender.session import BlenderSession
from pipelines.build.parts import vertex_parts


@dataclass
class TrueRig:
    vertices: np.ndarray  # (N, 3) at the grid's first frame
    faces: np.ndarray  # (M, 3)
    frames: np.ndarray  # (F, N, 3) at every grid frame
    vertex_part: np.ndarray  # (N,) part id, -1 for a vertex no bone moves
    part_weights: np.ndarray  # (N, P) skin weights summed per part, rows sum to 1
    joints: np.ndarray  # (P, 3) the head of each part's topmost bone, first frame
    parents: np.ndarray  # (P,) parent part, -1 for the root

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | Path) -> "TrueRig":
        with np.load(path) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})


def true_rig(session: BlenderSession, grid: RenderedGrid) -> TrueRig:
    """The true rig of the clip ``grid`` shows; the scene must still hold the asset it was rendered from."""
    scale, offset = grid.normalisation_scale, np.asarray(grid.normalisation_offset)
    with session.capture():
        clip = clip_ops.find_clip(grid.clip)
        clip_ops.play(clip)
        rig = scene_rig(clip)
        names = rig.skeleton.names
        bone_part = np.array([grid.part_map.bone_to_part[n] for n in names], np.int64)
        vertex_part = vertex_parts(grid.part_map, names, rig.vertex_bone)
        frames = []
        for frame in grid.frame_times:
            depsgraph = scene.set_frame(frame)
            world = np.concatenate([scene.evaluated_positions(o, depsgraph) for o in rig.meshes])
            frames.append((world + offset) * scale)
        scene.set_frame(grid.frame_times[0])
        heads = rig.skeleton.world_matrices()[:, :3, 3]
        faces = _faces(rig.meshes)
        weights = _part_weights(rig, bone_part, grid.part_map.n_parts)
    first_bone = [int(np.flatnonzero(bone_part == p)[0]) for p in range(grid.part_map.n_parts)]
    parents = [rig.skeleton.parents[b] for b in first_bone]
    return TrueRig(
        vertices=frames[0],
        faces=faces,
        frames=np.stack(frames),
        vertex_part=vertex_part,
        part_weights=weights,
        joints=(heads[first_bone] + offset) * scale,
        parents=np.array([bone_part[p] if p >= 0 else -1 for p in parents], np.int64),
    )


def _faces(meshes: list[bpy.types.Object]) -> np.ndarray:
    faces, start = [], 0
    for obj in meshes:
        mesh = obj.data
        mesh.calc_loop_triangles()
        triangles = np.empty(len(mesh.loop_triangles) * 3, np.int64)
        mesh.loop_triangles.foreach_get("vertices", triangles)
        faces.append(triangles.reshape(-1, 3) + start)
        start += len(mesh.vertices)
    return np.concatenate(faces)


def _part_weights(rig, bone_part: np.ndarray, n_parts: int) -> np.ndarray:
    """Skin weights per vertex summed per part and normalised; a vertex without weights (a rigid
    piece, an unweighted vertex) belongs wholly to its bone's part."""
    weights = np.zeros((len(rig.vertex_bone), n_parts))
    armature = rig.skeleton.armature
    for obj, rows in zip(rig.meshes, rig.vertex_ranges):
        if armature is None or scene.skin_armature(obj) != armature:
            continue
        groups = scene.bone_group_indices(obj, rig.skeleton.names, armature)
        block = weights[rows]
        for vertex in obj.data.vertices:  # bpy has no array access to vertex groups
            for element in vertex.groups:
                bone = groups.get(element.group)
                if bone is not None and element.weight == element.weight:
                    block[vertex.index, bone_part[bone]] += element.weight
        weights[rows] = block
    total = weights.sum(axis=1)
    missing = total <= 0
    weights[missing, bone_part[np.maximum(rig.vertex_bone[missing], 0)]] = 1.0
    return weights / weights.sum(axis=1, keepdims=True)
