"""A procedural rig (bones, skinned tubes, rigid pieces, sinusoidal clips) and its glTF encoding.

Coordinates are glTF's: Y up, +Z forward, +X the creature's left. Every joint has an identity rest
rotation, so a bone's local axes are the world axes and each inverse bind matrix is a translation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pipelines.build.sources.gltf_writer import Channel, GlbBuilder
from pipelines.build.sources.rig_geometry import MeshArrays, Tube, box_mesh, tube_mesh

KEYS_PER_SECOND = 12
# Values are rounded before they are written, so that last-bit differences between numpy builds
# (vectorised sin/cos differ by CPU) almost never change the bytes, and with them the sha256, of an asset.
_DECIMALS = 6


@dataclass(frozen=True)
class Bone:
    name: str
    parent: int | None
    head: np.ndarray  # rest position, world space


@dataclass(frozen=True)
class Swing:
    """``bone`` turns about its local ``axis`` by ``offset + amplitude * sin(2 pi cycles t / T + phase)`` degrees."""

    bone: int
    axis: tuple[float, float, float]
    amplitude: float
    phase: float = 0.0
    offset: float = 0.0
    cycles: int = 1


@dataclass(frozen=True)
class Clip:
    """A looping clip. ``bob`` moves the root bone up and down by that much, twice per cycle."""

    name: str
    duration: float
    swings: tuple[Swing, ...]
    bob: float = 0.0


@dataclass
class Rig:
    bones: list[Bone] = field(default_factory=list)
    tubes: list[Tube] = field(default_factory=list)
    pieces: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (bone, centre, size)
    clips: list[Clip] = field(default_factory=list)
    colour: tuple[float, float, float] = (0.7, 0.7, 0.7)

    def add_bone(self, name: str, parent: int | None, head) -> int:
        if parent is not None and not 0 <= parent < len(self.bones):
            raise ValueError(f"bone {name!r}: parent {parent} does not exist yet")
        self.bones.append(Bone(name, parent, np.asarray(head, dtype=np.float64)))
        return len(self.bones) - 1

    def add_chain(self, names: Sequence[str], parent: int | None, start, offsets) -> tuple[list[int], np.ndarray]:
        """A chain of bones whose heads start at ``start`` and step by ``offsets``; returns (ids, points).

        ``points`` holds the heads and the end of the last bone, ready to be a tube's polyline.
        """
        offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
        if len(names) != len(offsets):
            raise ValueError(f"{len(names)} names for {len(offsets)} bones")
        points = np.cumsum(np.vstack([np.asarray(start, dtype=np.float64), offsets]), axis=0)
        ids: list[int] = []
        for name, head in zip(names, points[:-1]):
            ids.append(self.add_bone(name, ids[-1] if ids else parent, head))
        return ids, points

    def add_limb(
        self,
        names: Sequence[str],
        parent: int | None,
        start,
        offsets,
        radii: Sequence[float],
        bulges: Sequence[float] | None = None,
    ) -> list[int]:
        """A chain (see :meth:`add_chain`) with a skinned tube along it that blends into ``parent``.

        ``radii`` holds one radius per point, or two: the root and tip of a linear taper.
        """
        ids, points = self.add_chain(names, parent, start, offsets)
        if len(radii) == 2:
            radii = np.linspace(radii[0], radii[1], len(points))
        bulges = tuple(bulges) if bulges is not None else None
        self.tubes.append(Tube(points, tuple(ids), tuple(float(r) for r in radii), bulges, start_bone=parent))
        return ids


def numbered(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i + 1}" for i in range(n)]


def rig_to_glb(rig: Rig, generator: str) -> bytes:
    """Encode ``rig`` as .glb: one armature (a skin over every bone), skinned tubes as one mesh, rigid
    pieces as meshes parented to their bone's node, one animation per clip."""
    if len({b.name for b in rig.bones}) != len(rig.bones):
        raise ValueError("bone names must be unique")
    builder = GlbBuilder(generator=generator)
    material = builder.add_material("body", (*rig.colour, 1.0))
    # joints in depth-first order: the order Blender gives the bones, so part ids follow it
    order = _depth_first(rig.bones)
    nodes = [0] * len(rig.bones)  # bone index -> node index
    for b in order:
        bone = rig.bones[b]
        parent_head = rig.bones[bone.parent].head if bone.parent is not None else np.zeros(3)
        parent = nodes[bone.parent] if bone.parent is not None else None
        nodes[b] = builder.add_node(bone.name, parent=parent, translation=_q(bone.head - parent_head))
    inverse_bind = np.tile(np.eye(4), (len(order), 1, 1))
    inverse_bind[:, :3, 3] = -np.array([rig.bones[b].head for b in order])
    skin = builder.add_skin("armature", [nodes[b] for b in order], _q(inverse_bind))
    joint_slot = np.empty(len(order), dtype=np.int64)
    joint_slot[order] = np.arange(len(order))  # bone index -> index in the skin's joints

    if rig.tubes:
        body = MeshArrays.concatenate([tube_mesh(t) for t in rig.tubes])
        weights = _q(body.weights)
        weights[:, 0] = 1.0 - weights[:, 1:].sum(axis=1)  # rounding must not break the sum to 1
        mesh = builder.add_mesh(
            "body", _q(body.positions), body.triangles, _q(body.normals), joint_slot[body.joints], weights, material
        )
        builder.add_node("body", mesh=mesh, skin=skin)
    for bone, centre, size in rig.pieces:
        piece = box_mesh(np.asarray(centre) - rig.bones[bone].head, size, bone)
        name = f"piece_{rig.bones[bone].name}"
        mesh = builder.add_mesh(name, _q(piece.positions), piece.triangles, _q(piece.normals), material=material)
        builder.add_node(name, parent=nodes[bone], mesh=mesh)

    for clip in rig.clips:
        builder.add_animation(clip.name, _clip_channels(rig, clip, nodes))
    return builder.to_bytes()


def _clip_channels(rig: Rig, clip: Clip, nodes: list[int]) -> list[Channel]:
    times = np.linspace(0.0, clip.duration, int(round(clip.duration * KEYS_PER_SECOND)) + 1)
    phase = 2 * np.pi * times / clip.duration
    rotations: dict[int, np.ndarray] = {}
    for swing in clip.swings:
        degrees = swing.offset + swing.amplitude * np.sin(swing.cycles * phase + swing.phase)
        turn = _axis_angle_quaternions(np.asarray(swing.axis, dtype=np.float64), np.radians(degrees))
        rotations[swing.bone] = _multiply(rotations[swing.bone], turn) if swing.bone in rotations else turn
    channels = [Channel(nodes[b], "rotation", times, _q(rotations[b])) for b in sorted(rotations)]
    if clip.bob:
        root = next(i for i, b in enumerate(rig.bones) if b.parent is None)
        lift = clip.bob * np.sin(2 * phase)
        positions = rig.bones[root].head + np.outer(lift, [0, 1, 0])
        channels.append(Channel(nodes[root], "translation", times, _q(positions)))
    return channels


def _depth_first(bones: list[Bone]) -> list[int]:
    children: dict[int | None, list[int]] = {}
    for index, bone in enumerate(bones):
        children.setdefault(bone.parent, []).append(index)
    if len(children.get(None, [])) != 1:
        raise ValueError("a rig needs exactly one root bone")
    order, stack = [], list(reversed(children[None]))
    while stack:
        index = stack.pop()
        order.append(index)
        stack.extend(reversed(children.get(index, [])))
    return order


def _axis_angle_quaternions(axis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    return np.column_stack([np.outer(np.sin(angles / 2), axis), np.cos(angles / 2)])


def _multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton products of (K, 4) quaternion rows stored (x, y, z, w)."""
    av, aw, bv, bw = a[:, :3], a[:, 3:], b[:, :3], b[:, 3:]
    vector = aw * bv + bw * av + np.cross(av, bv)
    scalar = aw * bw - np.sum(av * bv, axis=1, keepdims=True)
    return np.column_stack([vector, scalar])


def _q(values: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(values, dtype=np.float64), _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
