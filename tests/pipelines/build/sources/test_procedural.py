"""The procedural rig generator: seeded bytes, valid glTF, closed skinned meshes, clips that move,
checked in the file itself, with trimesh, and after a real import into Blender."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipelines.build.sources.gltf_writer import accessor_array, read_glb
from pipelines.build.sources.procedural import KINDS, generate_asset, generate_assets, generate_rig, generate_rig_bytes
from pipelines.build.sources.rig_geometry import Tube, tube_mesh

BONE_RANGES = {
    "arm": (2, 6),
    "snake": (6, 20),
    "biped": (10, 40),
    "quadruped": (10, 40),
    "insect": (10, 40),
    "rigid": (2, 40),
}
CLIPS = {
    "arm": ["wave", "reach"],
    "snake": ["slither"],
    "biped": ["walk", "wave"],
    "quadruped": ["walk", "wag"],
    "insect": ["walk"],
    "rigid": ["operate"],
}
SEEDS = range(12)
MAX_TRIANGLES = 4000
MIN_MOTION = 0.04  # largest bone-head displacement over a clip / rest size: 4x the default static threshold


def _doc(kind: str, seed: int) -> tuple[dict, bytes]:
    return read_glb(generate_rig_bytes(kind, seed))


def _joint_count(doc: dict) -> int:
    (skin,) = doc["skins"]
    return len(skin["joints"])


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes_other_seed_other_bytes(kind: str) -> None:
    first = generate_rig_bytes(kind, 3)
    assert generate_rig_bytes(kind, 3) == first
    assert generate_rig_bytes(kind, 4) != first
    others = {generate_rig_bytes(k, 3) for k in KINDS if k != kind}
    assert first not in others


@pytest.mark.parametrize("kind", KINDS)
def test_bone_counts_stay_in_range_and_vary(kind: str) -> None:
    low, high = BONE_RANGES[kind]
    counts = [_joint_count(_doc(kind, seed)[0]) for seed in SEEDS]
    assert all(low <= c <= high for c in counts), counts
    assert len(set(counts)) > 1, f"{kind}: every seed gave {counts[0]} bones"


@pytest.mark.parametrize("kind", KINDS)
def test_joint_tree_is_parent_first_with_unique_names(kind: str) -> None:
    doc, _ = _doc(kind, 5)
    joints = doc["skins"][0]["joints"]
    names = [doc["nodes"][j]["name"] for j in joints]
    assert len(set(names)) == len(names)
    parent_of = {c: p for p, node in enumerate(doc["nodes"]) for c in node.get("children", [])}
    roots = [j for j in joints if j not in parent_of]
    assert len(roots) == 1 and roots[0] in doc["scenes"][0]["nodes"]  # one tree: one armature
    for position, joint in enumerate(joints[1:], start=1):
        assert parent_of[joint] in joints[:position], f"{names[position]} comes before its parent"


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "rigid"])
def test_skin_weights_sum_to_one_and_blend_at_joints(kind: str) -> None:
    for seed in (0, 1):
        doc, binary = _doc(kind, seed)
        (skinned,) = [n for n in doc["nodes"] if "skin" in n]
        attributes = doc["meshes"][skinned["mesh"]]["primitives"][0]["attributes"]
        weights = accessor_array(doc, binary, attributes["WEIGHTS_0"]).astype(np.float64)
        joints = accessor_array(doc, binary, attributes["JOINTS_0"])
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
        assert weights.min() >= 0
        influences = (weights > 0).sum(axis=1)
        assert influences.max() == 2  # blended rings, never more than two bones
        assert (influences == 2).mean() > 0.2
        used = np.unique(joints[weights > 0])
        assert set(used) == set(range(_joint_count(doc))), "every bone moves some skin"


def test_tube_weights_are_half_and_half_at_a_joint_and_whole_away_from_it() -> None:
    sides = 8
    points = np.array([[0, 0, 0], [0, 1, 0], [0, 2, 0]], dtype=float)
    mesh = tube_mesh(Tube(points, bones=(3, 7), radii=(0.1, 0.1, 0.1), start_bone=1), sides=sides, rings_per_segment=4)
    heights = mesh.positions[:, 1]
    at_joint = np.isclose(heights, 1.0) & np.isclose(np.linalg.norm(mesh.positions[:, [0, 2]], axis=1), 0.1)
    assert at_joint.sum() == sides
    assert {tuple(j[:2]) for j in mesh.joints[at_joint]} == {(7, 3)}
    np.testing.assert_array_equal(mesh.weights[at_joint], [[0.5, 0.5, 0, 0]] * sides)
    middle = np.isclose(heights, 0.5) | np.isclose(heights, 1.5)
    np.testing.assert_array_equal(mesh.weights[middle][:, 0], 1.0)
    assert set(mesh.joints[np.isclose(heights, 0.5)][:, 0]) == {3}
    assert set(mesh.joints[np.isclose(heights, 1.5)][:, 0]) == {7}
    root = np.isclose(heights, 0.0) & ~np.isclose(np.abs(mesh.positions[:, 0]) + np.abs(mesh.positions[:, 2]), 0)
    np.testing.assert_array_equal(mesh.weights[root][:, :2], [[0.5, 0.5]] * sides)  # blends into start_bone
    assert set(mesh.joints[root][:, 1]) == {1}
    np.testing.assert_allclose(mesh.weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_rigid_kind_has_boxes_on_bones_and_no_skinned_mesh() -> None:
    for seed in (0, 1, 2):
        doc, _ = _doc("rigid", seed)
        assert not [n for n in doc["nodes"] if "skin" in n]
        joints = set(doc["skins"][0]["joints"])
        pieces = [
            (p, c) for p, node in enumerate(doc["nodes"]) for c in node.get("children", []) if "mesh" in doc["nodes"][c]
        ]
        assert {p for p, _ in pieces} == joints  # one piece on every bone
        for _, child in pieces:
            assert "JOINTS_0" not in doc["meshes"][doc["nodes"][child]["mesh"]]["primitives"][0]["attributes"]


@pytest.mark.parametrize("kind", KINDS)
def test_meshes_are_closed_outward_and_small(kind: str) -> None:
    scene = trimesh.load(io.BytesIO(generate_rig_bytes(kind, 2)), file_type="glb")
    triangles = 0
    for mesh in scene.geometry.values():
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces)  # merges the per-face corners of the boxes
        assert mesh.is_watertight
        assert mesh.volume > 0  # counter-clockwise from outside
        triangles += len(mesh.faces)
    assert 0 < triangles <= MAX_TRIANGLES


@pytest.mark.parametrize("kind", KINDS)
def test_clips_are_named_and_swing_tens_of_degrees(kind: str) -> None:
    doc, binary = _doc(kind, 0)
    assert [a["name"] for a in doc["animations"]] == CLIPS[kind]
    for animation in doc["animations"]:
        largest = 0.0
        for channel, sampler in zip(animation["channels"], animation["samplers"]):
            assert sampler["interpolation"] == "LINEAR"
            times = accessor_array(doc, binary, sampler["input"])[:, 0]
            assert times[0] == 0 and times[-1] >= 1.0
            if channel["target"]["path"] == "rotation":
                quaternions = accessor_array(doc, binary, sampler["output"]).astype(np.float64)
                np.testing.assert_allclose(np.linalg.norm(quaternions, axis=1), 1.0, atol=1e-5)
                largest = max(largest, np.degrees(2 * np.arccos(np.clip(np.abs(quaternions[:, 3]), 0, 1))).max())
        assert largest >= 20, f"{kind}/{animation['name']}: largest turn {largest:.1f} degrees"


def test_generate_asset_writes_the_bytes_it_describes(tmp_path: Path) -> None:
    ref = generate_asset("insect", 7, tmp_path / "out")
    path = tmp_path / "out" / "insect-7.glb"
    data = path.read_bytes()
    assert data == generate_rig_bytes("insect", 7)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.local_path == str(path.resolve())
    assert (ref.source, ref.license, ref.file_type) == ("procedural", "CC0-1.0", "glb")
    assert ref.file_identifier == "procedural://insect/7"
    assert ref.metadata["kind"] == "insect" and ref.metadata["seed"] == 7
    assert ref.metadata["n_bones"] == _joint_count(read_glb(data)[0]) == len(generate_rig("insect", 7).bones)
    assert ref.metadata["clips"] == CLIPS["insect"]
    assert ref.model_dump(by_alias=True)["fileIdentifier"] == "procedural://insect/7"


def test_generate_assets_cycles_kinds_and_is_idempotent(tmp_path: Path) -> None:
    refs = generate_assets(8, tmp_path, seed=10)
    assert [r.metadata["kind"] for r in refs] == list(KINDS) + list(KINDS[:2])
    assert [r.metadata["seed"] for r in refs] == list(range(10, 18))
    assert len({r.sha256 for r in refs}) == 8
    expected = sorted(f"{r.metadata['kind']}-{r.metadata['seed']}.glb" for r in refs)
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    again = generate_assets(8, tmp_path, seed=10)
    assert [r.sha256 for r in again] == [r.sha256 for r in refs]
    assert len(list(tmp_path.iterdir())) == 8  # no leftover partial files
    assert generate_assets(0, tmp_path) == []


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: generate_rig_bytes("dragon", 0), "unknown procedural kind 'dragon'"),
        (lambda p: generate_rig_bytes("arm", -1), "non-negative"),
        (lambda p: generate_rig_bytes("arm", 1.5), "non-negative integer"),
        (lambda p: generate_assets(-1, p), "non-negative"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path: Path, call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(tmp_path)


# -- Blender ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpy():
    import bpy

    return bpy


def _import(bpy, path: Path) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)


def _bone_heads(bpy, armature, action, frame: int) -> np.ndarray:
    armature.animation_data.action = action
    bpy.context.scene.frame_set(frame)
    return np.array([tuple(bone.head) for bone in armature.pose.bones])


@pytest.mark.parametrize("seed", (1, 2))
@pytest.mark.parametrize("kind", KINDS)
def test_blender_imports_an_armature_whose_clips_move_the_bones(bpy, kind: str, seed: int, tmp_path: Path) -> None:
    ref = generate_asset(kind, seed, tmp_path)
    _import(bpy, Path(ref.local_path))
    (armature,) = [o for o in bpy.data.objects if o.type == "ARMATURE"]
    doc, _ = read_glb(Path(ref.local_path).read_bytes())
    joint_names = [doc["nodes"][j]["name"] for j in doc["skins"][0]["joints"]]
    assert [b.name for b in armature.data.bones] == joint_names  # stable order for part ids
    assert len(armature.data.bones) == ref.metadata["n_bones"]

    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    if kind == "rigid":
        assert meshes and all(o.parent == armature and o.parent_type == "BONE" for o in meshes)
        assert {o.parent_bone for o in meshes} == set(joint_names)
    else:
        (body,) = meshes
        assert [m.type for m in body.modifiers] == ["ARMATURE"]
        sums = np.array([sum(g.weight for g in v.groups) for v in body.data.vertices])
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)

    rest = np.array([tuple(b.head_local) for b in armature.data.bones])
    size = np.linalg.norm(rest.max(axis=0) - rest.min(axis=0))
    assert sorted(a.name for a in bpy.data.actions) == sorted(ref.metadata["clips"])
    for action in bpy.data.actions:
        start, end = action.frame_range
        assert end - start > 1
        frames = np.linspace(start, end, 9).round().astype(int)
        heads = np.stack([_bone_heads(bpy, armature, action, int(f)) for f in frames])
        displacement = np.linalg.norm(heads - heads[0], axis=2).max()
        assert displacement > MIN_MOTION * size, f"{kind}/{action.name}: heads moved {displacement:.3f} of {size:.3f}"
