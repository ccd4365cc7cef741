"""The lifted rig as a rigged, animated .glb: one skinned mesh, one joint node per bone, one clip.

Written with the project's own glTF writer (:mod:`pipelines.build.sources.gltf_writer`). The lift works
in the render's normalised space with Blender's Z up; glTF is Y up, so every point and transform is
turned by (x, y, z) -> (x, z, -y), which Blender's importer undoes. Joint nodes rest at their joints
with identity rotations (each inverse bind matrix a translation); each frame's node transforms are
the bone's rest-to-frame motion expressed relative to its parent's, keyed at the sample's frame
times (seconds from the first).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from pipelines.build.sources.gltf_writer import Channel, GlbBuilder
from pipelines.lift.rig import LiftedRig

GENERATOR = "kinematicparts lift"
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]])
COLOUR = (0.7, 0.7, 0.7, 1.0)


def to_glb(rig: LiftedRig, clip: str | None = None) -> bytes:
    turn = Z_UP_TO_Y_UP
    vertices = rig.mesh.vertices @ turn[:3, :3].T
    joints = rig.skeleton.joints @ turn[:3, :3].T
    parents = rig.skeleton.parents
    builder = GlbBuilder(generator=GENERATOR)
    nodes: list[int] = []
    for b, name in enumerate(rig.skeleton.names):
        parent = parents[b]
        offset = joints[b] - (joints[parent] if parent >= 0 else 0.0)
        nodes.append(builder.add_node(f"bone_{b:02d}_{name}"[:60], parent=nodes[parent] if parent >= 0 else None,
                                      translation=offset))
    inverse_bind = np.tile(np.eye(4), (len(joints), 1, 1))
    inverse_bind[:, :3, 3] = -joints
    skin = builder.add_skin("armature", nodes, inverse_bind)

    order = np.argsort(-rig.weights, axis=1)[:, :4]
    top = np.take_along_axis(rig.weights, order, axis=1)
    top = top / top.sum(axis=1, keepdims=True)
    material = builder.add_material("body", COLOUR)
    mesh = builder.add_mesh("body", vertices, rig.mesh.faces, vertex_normals(vertices, rig.mesh.faces),
                            order, top, material)
    builder.add_node("body", mesh=mesh, skin=skin)
    if len(rig.motion) > 1:
        builder.add_animation(clip or rig.views.clip, _channels(rig, joints, nodes))
    return builder.to_bytes()


def _channels(rig: LiftedRig, joints: np.ndarray, nodes: list[int]) -> list[Channel]:
    times = (np.asarray(rig.views.frame_times) - rig.views.frame_times[0]) / rig.views.fps
    motion = Z_UP_TO_Y_UP @ rig.motion @ Z_UP_TO_Y_UP.T  # (F, B, 4, 4) in glTF axes
    rest = np.tile(np.eye(4), (len(joints), 1, 1))
    rest[:, :3, 3] = joints
    world = motion @ rest  # each joint's frame at every frame
    channels = []
    for b, parent in enumerate(rig.skeleton.parents):
        local = np.linalg.inv(world[:, parent]) @ world[:, b] if parent >= 0 else world[:, b]
        quaternions = Rotation.from_matrix(local[:, :3, :3]).as_quat()  # x, y, z, w
        flips = np.cumprod(np.where(np.sum(quaternions[1:] * quaternions[:-1], axis=1) < 0, -1.0, 1.0))
        quaternions[1:] *= flips[:, None]  # the short way between keys
        channels.append(Channel(nodes[b], "rotation", times, quaternions))
        channels.append(Channel(nodes[b], "translation", times, local[:, :3, 3]))
    return channels


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    face = np.cross(b - a, c - a)
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, faces[:, i], face)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
