"""Read-only queries over the loaded scene: skeletons, skinning, attachments, evaluated geometry.

A :class:`Skeleton` is the kinematic tree of an asset: the bones of its armature in depth-first order,
or, for a rigidly animated object with no armature, one pseudo-bone per animated object node.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

# Object types that render but carry no skin weights or bone attachment the part map could use.
NON_MESH_RENDERABLES = ("CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GREASEPENCIL")


def armatures() -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.type == "ARMATURE"]


def renderable_meshes() -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.type == "MESH" and not o.hide_render]


def depth_first_bones(armature: bpy.types.Object) -> list[bpy.types.Bone]:
    """Bones in depth-first order, roots and children in the armature's own (file) order."""
    order: list[bpy.types.Bone] = []
    stack = [b for b in reversed(armature.data.bones) if b.parent is None]
    while stack:
        bone = stack.pop()
        order.append(bone)
        stack.extend(reversed(bone.children))
    return order


@dataclass
class Skeleton:
    """Bones (or pseudo-bones) in depth-first order, with three points per bone to measure motion.

    ``local_points[b]`` are, in the bone's own space, its head, its tail and a point off its axis, so a
    twist about the bone's axis also moves a point.
    """

    names: list[str]
    parents: list[int]
    armature: bpy.types.Object | None
    nodes: list[bpy.types.Object | None]  # pseudo-bones only; None is the static world root
    local_points: np.ndarray  # [B, 3, 4] homogeneous

    def world_matrices(self) -> np.ndarray:
        """[B, 4, 4] world matrices of the bones at the current frame."""
        if self.armature is None:
            return np.array([np.eye(4) if n is None else np.array(n.matrix_world) for n in self.nodes])
        arm_world = np.array(self.armature.matrix_world)
        pose = self.armature.pose.bones
        return np.array([arm_world @ np.array(pose[name].matrix) for name in self.names])

    def anchor_matrices(self, world: np.ndarray) -> np.ndarray:
        """[B, 4, 4] the matrix each bone moves relative to: its parent bone, else the armature
        object (a root bone) or the world (a root pseudo-bone)."""
        root = np.array(self.armature.matrix_world) if self.armature is not None else np.eye(4)
        return np.array([world[p] if p >= 0 else root for p in self.parents])

    def world_points(self, world: np.ndarray) -> np.ndarray:
        """[B, 3, 3] world positions of each bone's three points."""
        return np.einsum("bij,bkj->bki", world, self.local_points)[..., :3]


def skeleton_from_armature(armature: bpy.types.Object) -> Skeleton:
    bones = depth_first_bones(armature)
    index = {b.name: i for i, b in enumerate(bones)}
    points = np.zeros((len(bones), 3, 4))
    points[..., 3] = 1.0
    for i, bone in enumerate(bones):
        points[i, 1, 1] = bone.length  # bone space: y runs from head to tail
        points[i, 2, 2] = bone.length
    return Skeleton(
        names=[b.name for b in bones],
        parents=[index[b.parent.name] if b.parent else -1 for b in bones],
        armature=armature,
        nodes=[],
        local_points=points,
    )


STATIC_ROOT = "__static__"


def skeleton_from_nodes(nodes: list[bpy.types.Object], static_root: bool = False) -> Skeleton:
    """Pseudo-bones: the animated object nodes, parented by their nearest animated ancestor. With
    ``static_root``, a first pseudo-bone stands for the world (``nodes`` entry None): the parent of
    the animated roots and the bone of meshes that hang from no animated node."""
    by_pointer = {n.as_pointer(): n for n in nodes}
    order: list[bpy.types.Object | None] = [None] if static_root else []
    stack = sorted((n for n in nodes if _animated_ancestor(n, by_pointer) is None), key=lambda n: n.name, reverse=True)
    while stack:
        node = stack.pop()
        order.append(node)
        children = [n for n in nodes if _animated_ancestor(n, by_pointer) == node]
        stack.extend(sorted(children, key=lambda n: n.name, reverse=True))
    index = {n.as_pointer(): i for i, n in enumerate(order) if n is not None}
    points = np.zeros((len(order), 3, 4))
    points[..., 3] = 1.0
    parents = []
    for i, node in enumerate(order):
        if node is None:
            parents.append(-1)
            continue
        size = max(float(np.linalg.norm(np.ptp(np.array(node.bound_box), axis=0))), 1e-6)
        points[i, 1, 0] = size
        points[i, 2, 1] = size
        ancestor = _animated_ancestor(node, by_pointer)
        parents.append(index[ancestor.as_pointer()] if ancestor is not None else (0 if static_root else -1))
    names = [STATIC_ROOT if n is None else n.name for n in order]
    return Skeleton(names, parents, None, order, points)


def _animated_ancestor(obj: bpy.types.Object, nodes: dict[int, bpy.types.Object]) -> bpy.types.Object | None:
    parent = obj.parent
    while parent is not None and parent.as_pointer() not in nodes:
        parent = parent.parent
    return parent


def skin_armature(obj: bpy.types.Object) -> bpy.types.Object | None:
    """The armature that deforms ``obj`` through an enabled Armature modifier, if any."""
    for modifier in obj.modifiers:
        if modifier.type == "ARMATURE" and modifier.object is not None and modifier.show_render:
            return modifier.object
    return None


def bone_group_indices(obj: bpy.types.Object, bone_names: list[str], armature: bpy.types.Object) -> dict[int, int]:
    """Vertex-group index -> bone index, for the groups the Armature modifier deforms with."""
    index = {name: i for i, name in enumerate(bone_names)}
    deform = {b.name for b in armature.data.bones if b.use_deform}
    return {g.index: index[g.name] for g in obj.vertex_groups if g.name in index and g.name in deform}


def skin_weights(obj: bpy.types.Object, groups: dict[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Per vertex: the bone of the largest raw weight (-1 if none), the raw weight sum, any NaN.

    A Python loop over the vertex groups (bpy exposes no array access to them): ~1 s per 250k vertices.
    Ties go to the lower bone index, so the result is deterministic.
    """
    vertices = obj.data.vertices
    dominant = np.full(len(vertices), -1, dtype=np.int64)
    sums = np.zeros(len(vertices))
    has_nan = False
    for v in vertices:
        best_bone, best_weight, total = -1, 0.0, 0.0
        for element in v.groups:
            bone = groups.get(element.group)
            if bone is None:
                continue
            weight = element.weight
            if weight != weight:  # NaN
                has_nan = True
                continue
            total += weight
            if weight > best_weight or (weight == best_weight and weight > 0 and bone < best_bone):
                best_bone, best_weight = bone, weight
        dominant[v.index] = best_bone
        sums[v.index] = total
    return dominant, sums, has_nan


def attachment(obj: bpy.types.Object, skeleton: Skeleton) -> int | None:
    """The bone an object follows rigidly: its nearest bone parent, the skeleton's first root when it
    hangs under the armature object, or for pseudo-bones its nearest animated ancestor-or-self (else
    the static root, when the skeleton has one)."""
    names = {n: i for i, n in enumerate(skeleton.names)}
    if skeleton.armature is None:
        nodes = {n.as_pointer(): i for i, n in enumerate(skeleton.nodes) if n is not None}
        node: bpy.types.Object | None = obj
        while node is not None:
            if node.as_pointer() in nodes:
                return nodes[node.as_pointer()]
            node = node.parent
        return 0 if skeleton.names[:1] == [STATIC_ROOT] else None
    node = obj
    while node.parent is not None:
        if node.parent == skeleton.armature:
            if node.parent_type == "BONE" and node.parent_bone in names:
                return names[node.parent_bone]
            return 0
        node = node.parent
    return None


def evaluated_positions(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> np.ndarray:
    """[N, 3] world-space vertex positions of the evaluated (deformed) mesh at the current frame."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.data
    local = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", local)
    local = local.reshape(-1, 3).astype(np.float64)
    world = np.array(evaluated.matrix_world)
    return local @ world[:3, :3].T + world[:3, 3]


def set_frame(frame: float) -> bpy.types.Depsgraph:
    """Move the scene to a (possibly fractional) frame and return the evaluated depsgraph."""
    whole = int(np.floor(frame))
    bpy.context.scene.frame_set(whole, subframe=float(frame - whole))
    return bpy.context.evaluated_depsgraph_get()


def count_skeletons(skeletons: list[Skeleton], mesh_bones: list[tuple[int, set[int]]]) -> int:
    """Independent skeletons: bone trees (a root bone and its descendants) joined when they drive the
    same mesh. The glTF importer puts separate skins into one armature object, so counting armature
    objects alone would miss a file with two skeletons.

    ``mesh_bones`` holds, per mesh, (index into ``skeletons``, bones that drive some of its vertices).
    Trees that drive no mesh do not count (IK targets and other helper roots), but a skeleton that
    drives nothing at all counts once.
    """
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(tree: tuple[int, int]) -> tuple[int, int]:
        while parent[tree] != tree:
            tree = parent[tree]
        return tree

    for s, bones in mesh_bones:
        trees = sorted({(s, _root(skeletons[s].parents, b)) for b in bones})
        for tree in trees:
            parent.setdefault(tree, tree)
        for tree in trees[1:]:
            parent[find(tree)] = find(trees[0])
    driving = {find(t) for t in parent}
    idle = sum(1 for s in range(len(skeletons)) if not any(t[0] == s for t in parent))
    return len(driving) + idle


def _root(parents: list[int], bone: int) -> int:
    while parents[bone] >= 0:
        bone = parents[bone]
    return bone
