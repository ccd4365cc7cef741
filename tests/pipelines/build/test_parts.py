"""Bones to kinematic parts: hand-built rigs with known answers, bad rigs, and the real glTF samples."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from pipelines.build.colour import encode_palette
from pipelines.build.parts import PartsError, RigGeometry, build_part_map, kinematic_parts, part_centroids
from schemas.assets import RejectReason
from schemas.parts import ColourRules, PartMap, PartRules

MOVING = 0.5  # relative motion well above min_relative_motion (1e-3)


def rig(
    parents: list[int], area: list[float], motion: list[float] | None = None, names: list[str] | None = None
) -> RigGeometry:
    """One vertex per bone with the given surface area, placed at (i / B, 0.5, 0.5)."""
    n = len(parents)
    return RigGeometry(
        bone_names=names or [f"b{i}" for i in range(n)],
        bone_parents=parents,
        vertex_bone=np.arange(n),
        vertex_area=np.asarray(area, dtype=float),
        vertex_positions=np.column_stack([np.arange(n) / n, np.full(n, 0.5), np.full(n, 0.5)]),
        bone_relative_motion=np.full(n, MOVING) if motion is None else np.asarray(motion, dtype=float),
    )


# A small figure, in depth-first order:
#   0 root ─┬─ 1 spine ─┬─ 2 head
#           │           ├─ 3 arm_l ── 4 hand_l
#           │           └─ 5 arm_r ── 6 hand_r
#           └─ 7 leg
FIGURE_PARENTS = [-1, 0, 1, 1, 3, 1, 5, 0]
FIGURE_NAMES = ["root", "spine", "head", "arm_l", "hand_l", "arm_r", "hand_r", "leg"]


def test_every_large_moving_bone_is_its_own_part_in_depth_first_order():
    parts = kinematic_parts(rig(FIGURE_PARENTS, [10] * 8), PartRules())
    assert parts.bone_to_part.tolist() == list(range(8))
    assert parts.part_root_bones == list(range(8))
    assert parts.vertex_part.tolist() == list(range(8))
    assert parts.part_area.tolist() == [10.0] * 8


def test_a_bone_with_too_little_surface_merges_into_its_parent():
    # Total 100; hand_l has 0.5 % < 1 %: it joins arm_l. Everything else has 5 % or more.
    area = [10, 20, 10, 14.5, 0.5, 15, 10, 20]
    parts = kinematic_parts(rig(FIGURE_PARENTS, area), PartRules())
    assert parts.bone_to_part.tolist() == [0, 1, 2, 3, 3, 4, 5, 6]
    assert parts.part_root_bones == [0, 1, 2, 3, 5, 6, 7]
    assert parts.part_area[3] == 15.0


def test_small_children_add_up_before_their_parent_is_judged():
    # Bottom-up: hand_l (0.5) merges into arm_l (0.6), which then holds 1.1 % and stays; hand_r (0.5)
    # merges into arm_r (0.4), which holds only 0.9 % and merges on into spine.
    area = [30, 28, 20, 0.6, 0.5, 0.4, 0.5, 20]
    parts = kinematic_parts(rig(FIGURE_PARENTS, area), PartRules())
    assert parts.bone_to_part.tolist() == [0, 1, 2, 3, 3, 1, 1, 4]
    assert parts.part_area.tolist() == pytest.approx([30, 28.9, 20, 1.1, 20])


def test_a_bone_that_never_moves_relative_to_its_parent_merges_but_its_moving_child_stays():
    motion = [0.0, MOVING, MOVING, 0.0, MOVING, MOVING, 0.0005, MOVING]  # arm_l rigid on spine, hand_r nearly
    parts = kinematic_parts(rig(FIGURE_PARENTS, [10] * 8, motion), PartRules())
    # arm_l joins spine; hand_l (moving relative to arm_l) stays, and its part's parent is now spine's.
    assert parts.bone_to_part.tolist() == [0, 1, 2, 1, 3, 4, 4, 5]
    assert [FIGURE_NAMES[b] for b in parts.part_root_bones] == ["root", "spine", "head", "hand_l", "arm_r", "leg"]


def test_motion_threshold_is_strict():
    at_threshold = rig([-1, 0], [10, 10], [0.0, 1e-3])
    assert kinematic_parts(at_threshold, PartRules(min_relative_motion=1e-3)).n_parts == 2
    assert kinematic_parts(at_threshold, PartRules(min_relative_motion=1.1e-3)).n_parts == 1


def test_a_root_without_surface_absorbs_its_largest_child_and_names_the_part():
    # "root" weighs nothing (typical of an armature's root bone); of its children, the spine subtree is
    # the larger part (spine 20 vs leg 20: a tie, so the first in depth-first order wins).
    area = [0, 20, 15, 15, 10, 10, 10, 20]
    parts = kinematic_parts(rig(FIGURE_PARENTS, area), PartRules())
    assert parts.bone_to_part.tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    assert [FIGURE_NAMES[b] for b in parts.part_root_bones] == [
        "root",
        "head",
        "arm_l",
        "hand_l",
        "arm_r",
        "hand_r",
        "leg",
    ]
    assert parts.part_area[0] == 20.0


def test_a_zero_area_bone_merges_even_with_no_surface_threshold():
    parts = kinematic_parts(rig([-1, 0, 1], [10, 0, 10]), PartRules(min_surface_fraction=0.0))
    assert parts.bone_to_part.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    "max_parts, bone_to_part, names",
    [
        # Total 101, every bone above 1 % and moving: 8 parts. Smallest first, ties to the later bone:
        # hand_r (10) -> arm_r (23); hand_l (10) -> arm_l (24); spine (11) -> root (23). 5 left.
        (5, [0, 0, 1, 2, 2, 3, 3, 4], ["root", "head", "arm_l", "arm_r", "leg"]),
        # Then head (15) -> its parent spine, which is root's part now (38).
        (4, [0, 0, 0, 1, 1, 2, 2, 3], ["root", "arm_l", "arm_r", "leg"]),
        # Then leg (16) -> root (54); arm_r (23) -> root (77); arm_l (24) stays.
        (2, [0, 0, 0, 1, 1, 0, 0, 0], ["root", "arm_l"]),
        (1, [0] * 8, ["root"]),
    ],
)
def test_max_parts_merges_the_smallest_part_into_its_parent(max_parts, bone_to_part, names):
    area = [12, 11, 15, 14, 10, 13, 10, 16]
    parts = kinematic_parts(rig(FIGURE_PARENTS, area, names=FIGURE_NAMES), PartRules(max_parts=max_parts))
    assert parts.bone_to_part.tolist() == bone_to_part
    assert [FIGURE_NAMES[b] for b in parts.part_root_bones] == names
    assert parts.part_area.sum() == 101


def test_equally_small_parts_merge_the_later_one_first():
    parts = kinematic_parts(rig([-1, 0, 0], [50, 25, 25]), PartRules(max_parts=2))
    assert parts.bone_to_part.tolist() == [0, 1, 0]


def test_a_smallest_root_absorbs_its_largest_child():
    parts = kinematic_parts(rig([-1, 0, 0], [5, 50, 45]), PartRules(max_parts=2))
    assert parts.bone_to_part.tolist() == [0, 0, 1]
    assert parts.part_root_bones == [0, 2]
    assert parts.part_area.tolist() == [55, 45]


def test_a_tiny_second_root_joins_the_largest_other_root():
    # Two trees: 0 -> 1 (big) and 2 -> 3 (0.5 % in all). Bone 3 merges into 2; root 2, still 0.5 % and
    # with no child part, joins the largest other root part (0).
    parts = kinematic_parts(rig([-1, 0, -1, 2], [60, 39.5, 0.25, 0.25]), PartRules())
    assert parts.bone_to_part.tolist() == [0, 1, 0, 0]
    assert parts.part_root_bones == [0, 1]


def test_unweighted_vertices_have_no_part_and_no_say_in_the_surface():
    geometry = RigGeometry(
        bone_names=["a", "b"],
        bone_parents=[-1, 0],
        vertex_bone=np.array([0, 1, -1, -1]),
        vertex_area=np.array([1.0, 0.015, 100.0, 100.0]),
        vertex_positions=np.full((4, 3), 0.5),
        bone_relative_motion=np.array([0.0, MOVING]),
    )
    # b holds 0.015 / 1.015 = 1.48 % of the skinned surface: it stays, whatever the unweighted area.
    parts = kinematic_parts(geometry, PartRules())
    assert parts.vertex_part.tolist() == [0, 1, -1, -1]
    assert parts.n_parts == 2


def test_centroids_are_area_weighted_at_the_reference_pose():
    geometry = RigGeometry(
        bone_names=["a", "b"],
        bone_parents=[-1, 0],
        vertex_bone=np.array([0, 0, 1, 1, -1]),
        vertex_area=np.array([1.0, 3.0, 2.0, 2.0, 50.0]),
        vertex_positions=np.array([[0, 0, 0], [1, 1, 0.5], [0.2, 0.4, 0.6], [0.4, 0.4, 1.0], [0.9, 0.9, 0.9]]),
        bone_relative_motion=np.array([0.0, MOVING]),
    )
    parts = kinematic_parts(geometry, PartRules())
    # a: (1 * (0, 0, 0) + 3 * (1, 1, 0.5)) / 4 = (0.75, 0.75, 0.375); b: the plain mean (0.3, 0.4, 0.8).
    assert part_centroids(geometry, parts) == pytest.approx(np.array([[0.75, 0.75, 0.375], [0.3, 0.4, 0.8]]))


def test_build_part_map_maps_every_bone_and_colours_parts_by_centroid():
    area = [10, 20, 10, 14.5, 0.5, 15, 10, 20]
    geometry = rig(FIGURE_PARENTS, area, names=FIGURE_NAMES)
    part_map, vertex_part = build_part_map(geometry, PartRules(), ColourRules())
    assert isinstance(part_map, PartMap)
    assert part_map.bone_to_part == {
        "root": 0, "spine": 1, "head": 2, "arm_l": 3, "hand_l": 3, "arm_r": 4, "hand_r": 5, "leg": 6,
    }  # fmt: skip
    assert part_map.part_names == ["root", "spine", "head", "arm_l", "arm_r", "hand_r", "leg"]
    assert vertex_part.tolist() == [0, 1, 2, 3, 3, 4, 5, 6]
    # arm_l's centroid: bones 3 (area 14.5, x = 3/8) and 4 (0.5, x = 4/8).
    assert part_map.centroids[3] == pytest.approx([(14.5 * 3 / 8 + 0.5 * 4 / 8) / 15, 0.5, 0.5])
    assert part_map.palette == encode_palette(np.array(part_map.centroids), ColourRules()).tolist()
    assert part_map.reference_pose == "first_frame"


def test_parts_are_deterministic_and_independent_of_vertex_order():
    rng = np.random.default_rng(7)
    n = 500
    bone = rng.integers(-1, 8, n)
    geometry = RigGeometry(FIGURE_NAMES, FIGURE_PARENTS, bone, rng.random(n), rng.random((n, 3)), rng.random(8))
    order = rng.permutation(n)
    shuffled = RigGeometry(
        FIGURE_NAMES,
        FIGURE_PARENTS,
        bone[order],
        geometry.vertex_area[order],
        geometry.vertex_positions[order],
        geometry.bone_relative_motion,
    )
    first, vertices = build_part_map(geometry, PartRules(max_parts=4), ColourRules())
    again, _ = build_part_map(geometry, PartRules(max_parts=4), ColourRules())
    other, shuffled_vertices = build_part_map(shuffled, PartRules(max_parts=4), ColourRules())
    assert first == again
    assert first.bone_to_part == other.bone_to_part and first.palette == other.palette
    assert np.array_equal(vertices[order], shuffled_vertices)


def three_bone_chain(**changes) -> RigGeometry:
    """A valid three-bone chain, one vertex per bone, with ``changes`` applied."""
    fields = dict(
        bone_names=["a", "b", "c"],
        bone_parents=[-1, 0, 1],
        vertex_bone=np.array([0, 1, 2]),
        vertex_area=np.ones(3),
        vertex_positions=np.full((3, 3), 0.5),
        bone_relative_motion=np.full(3, MOVING),
    )
    return RigGeometry(**{**fields, **changes})


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(bone_parents=[-1, 0]), "3 bone names but 2 parents"),
        (dict(bone_relative_motion=np.zeros(2)), "relative motions"),
        (dict(bone_parents=[-1, 2, 0]), "not in depth-first order"),
        (dict(bone_parents=[1, -1, 0]), "not in depth-first order"),
        (dict(vertex_bone=np.array([0.0, 1.0, 2.0])), "integer"),
        (dict(vertex_area=np.ones(2)), "vertex_area"),
        (dict(vertex_area=np.array([1.0, -1.0, 1.0])), "negative"),
        (dict(vertex_positions=np.full((3, 3), -0.4)), "unit cube"),
    ],
)
def test_a_malformed_rig_is_a_clear_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        kinematic_parts(three_bone_chain(**changes), PartRules())


@pytest.mark.parametrize(
    "changes, reason",
    [
        (
            dict(bone_names=[], bone_parents=[], bone_relative_motion=np.zeros(0), vertex_bone=np.full(3, -1)),
            RejectReason.too_few_bones,
        ),
        (dict(bone_names=["a", "b", "a"]), RejectReason.bad_weights),
        (dict(vertex_bone=np.array([0, 1, 3])), RejectReason.bad_weights),
        (dict(vertex_positions=np.array([[0.5, 0.5, np.nan]] * 3)), RejectReason.nan_geometry),
        (dict(vertex_area=np.array([1.0, np.inf, 1.0])), RejectReason.nan_geometry),
        (dict(vertex_bone=np.full(3, -1)), RejectReason.too_few_parts),
        (dict(vertex_area=np.zeros(3)), RejectReason.too_few_parts),
    ],
)
def test_an_asset_that_cannot_give_parts_raises_a_reason_code(changes, reason):
    with pytest.raises(PartsError) as raised:
        kinematic_parts(three_bone_chain(**changes), PartRules())
    assert raised.value.reason is reason


# --- the real glTF samples --------------------------------------------------------------------------------

_COMPONENTS = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}


def rig_from_glb(path: Path) -> RigGeometry:
    """The skin of a .glb read with numpy alone: joints in depth-first order of the node tree, each
    vertex's dominant joint, a third of each triangle's area per corner, bind-pose positions scaled into
    the unit cube. Every bone counts as moving (the rule's surface and count steps are under test)."""
    data = path.read_bytes()
    json_length = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20 : 20 + json_length])
    binary = data[20 + json_length + 8 :]

    def accessor(index: int) -> np.ndarray:
        acc = doc["accessors"][index]
        view = doc["bufferViews"][acc["bufferView"]]
        dtype = np.dtype(_COMPONENTS[acc["componentType"]])
        width = _WIDTH[acc["type"]]
        stride = view.get("byteStride", dtype.itemsize * width)
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        rows = np.lib.stride_tricks.as_strided(
            np.frombuffer(binary, dtype=np.uint8, offset=start), (acc["count"], stride), (stride, 1)
        )
        return rows[:, : dtype.itemsize * width].copy().view(dtype).reshape(acc["count"], width)

    joints = doc["skins"][0]["joints"]
    order: list[int] = []
    parents: list[int] = []

    def visit(node: int, joint_parent: int) -> None:
        if node in joints:
            order.append(node)
            parents.append(joint_parent)
            joint_parent = len(order) - 1
        for child in doc["nodes"][node].get("children", []):
            visit(child, joint_parent)

    children = {c for n in doc["nodes"] for c in n.get("children", [])}
    for root in (i for i in range(len(doc["nodes"])) if i not in children):
        visit(root, -1)
    bone_of_joint = np.array([order.index(node) for node in joints])

    primitive = doc["meshes"][0]["primitives"][0]
    positions = accessor(primitive["attributes"]["POSITION"]).astype(np.float64)
    weights = accessor(primitive["attributes"]["WEIGHTS_0"])
    skin_joints = accessor(primitive["attributes"]["JOINTS_0"])
    dominant = skin_joints[np.arange(len(weights)), weights.argmax(axis=1)]
    vertex_bone = np.where(weights.max(axis=1) > 0, bone_of_joint[dominant], -1)
    triangles = (
        accessor(primitive["indices"]).reshape(-1, 3)
        if "indices" in primitive
        else np.arange(len(positions)).reshape(-1, 3)
    )
    corners = positions[triangles]
    triangle_area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    vertex_area = np.bincount(triangles.ravel(), weights=np.repeat(triangle_area / 3, 3), minlength=len(positions))
    low, high = positions.min(axis=0), positions.max(axis=0)
    unit = (positions - low) / (high - low).max()
    names = [doc["nodes"][node].get("name", f"node{node}") for node in order]
    return RigGeometry(names, parents, vertex_bone, vertex_area, unit, np.full(len(order), MOVING))


@pytest.mark.parametrize("asset", ["CesiumMan.glb", "Fox.glb", "RiggedFigure.glb", "RiggedSimple.glb"])
def test_real_skins_give_bounded_well_separated_parts(shared_gltf, asset):
    geometry = rig_from_glb(shared_gltf / asset)
    rules = PartRules(max_parts=8)
    parts = kinematic_parts(geometry, rules)
    part_map, vertex_part = build_part_map(geometry, rules, ColourRules())

    assert 1 <= part_map.n_parts <= 8
    assert set(part_map.bone_to_part) == set(geometry.bone_names)
    assert np.array_equal(vertex_part, parts.vertex_part)
    # Every part holds at least min_surface_fraction of the skinned surface, and the areas add up.
    skinned = geometry.vertex_area[geometry.vertex_bone >= 0].sum()
    assert parts.part_area.sum() == pytest.approx(skinned)
    assert (parts.part_area / skinned >= rules.min_surface_fraction).all()
    # Each part is one connected piece of the skeleton: its root bone's subtree holds all its bones.
    for part, root in enumerate(parts.part_root_bones):
        for bone in np.flatnonzero(parts.bone_to_part == part):
            ancestor = int(bone)
            while ancestor not in (root, -1):
                ancestor = geometry.bone_parents[ancestor]
            assert ancestor == root, (asset, part, bone)
    colours = np.array(part_map.palette, dtype=float)
    gaps = np.linalg.norm(colours[:, None] - colours[None], axis=-1)[np.triu_indices(len(colours), 1)]
    assert (gaps >= ColourRules().min_distance).all()
