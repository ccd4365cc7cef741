"""Each broken-asset factory makes exactly the defect it names, seen in the file, by trimesh and by
Blender's importer (what the probe will meet)."""

from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pipelines.build.sources.gltf_writer import GltfWriteError, accessor_array, read_glb
from pipelines.build.sources.procedural import generate_rig_bytes
from tests import factories


@pytest.fixture(scope="module")
def bpy():
    import bpy

    return bpy


def _import(bpy, path: Path) -> dict[str, list]:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path), disable_bone_shape=True)
    objects: dict[str, list] = {}
    for obj in bpy.data.objects:
        objects.setdefault(obj.type, []).append(obj)
    return objects


def _attributes(doc: dict, mesh: int = 0) -> dict:
    return doc["meshes"][mesh]["primitives"][0]["attributes"]


def _evaluated_positions(bpy, obj, frame: int) -> np.ndarray:
    bpy.context.scene.frame_set(frame)
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    positions = np.array([tuple(v.co) for v in mesh.vertices])
    evaluated.to_mesh_clear()
    return positions


def test_good_glb_is_the_procedural_asset(tmp_path: Path, bpy) -> None:
    path = factories.good_glb(tmp_path, "biped", 3)
    assert path.parent == tmp_path and path.read_bytes() == generate_rig_bytes("biped", 3)
    assert len(_import(bpy, path)["ARMATURE"]) == 1


def test_no_armature_glb_is_an_animated_mesh_without_joints(tmp_path: Path, bpy) -> None:
    doc, _ = read_glb(factories.no_armature_glb(tmp_path).read_bytes())
    assert "skins" not in doc and "JOINTS_0" not in _attributes(doc)
    assert doc["animations"][0]["channels"]
    objects = _import(bpy, tmp_path / "no-armature.glb")
    assert "ARMATURE" not in objects and len(objects["MESH"]) == 1
    assert [a.name for a in bpy.data.actions] == ["swing"]


def test_two_armatures_glb_has_two_separate_skinned_trees(tmp_path: Path, bpy) -> None:
    doc, _ = read_glb(factories.two_armatures_glb(tmp_path).read_bytes())
    first, second = (set(s["joints"]) for s in doc["skins"])
    assert first and second and not first & second
    assert sorted(n["skin"] for n in doc["nodes"] if "skin" in n) == [0, 1]
    objects = _import(bpy, tmp_path / "two-armatures.glb")
    assert len(objects["ARMATURE"]) == 2
    assert sorted(len(a.data.bones) for a in objects["ARMATURE"]) == [factories.CHAIN_BONES] * 2


def test_bad_weights_glb_sums_to_point_six(tmp_path: Path, bpy) -> None:
    doc, binary = read_glb(factories.bad_weights_glb(tmp_path).read_bytes())
    weights = accessor_array(doc, binary, _attributes(doc)["WEIGHTS_0"]).astype(np.float64)
    np.testing.assert_allclose(weights.sum(axis=1), factories.BAD_WEIGHT_SCALE, atol=1e-6)
    assert np.isclose(weights[:, :2], 0.3, atol=1e-6).all(axis=1).any()  # 0.3 + 0.3 at a joint
    # Blender keeps the raw weights, so the probe sees the defect
    (body,) = _import(bpy, tmp_path / "bad-weights.glb")["MESH"]
    sums = np.array([sum(g.weight for g in v.groups) for v in body.data.vertices])
    np.testing.assert_allclose(sums, factories.BAD_WEIGHT_SCALE, atol=1e-5)


def test_nan_positions_glb_has_nan_in_the_file(tmp_path: Path, bpy) -> None:
    data = factories.nan_positions_glb(tmp_path).read_bytes()
    doc, binary = read_glb(data)
    position = _attributes(doc)["POSITION"]
    positions = accessor_array(doc, binary, position)
    assert np.isnan(positions).any(axis=1).sum() == factories.NAN_VERTICES
    assert np.isfinite(doc["accessors"][position]["min"]).all()  # the JSON itself stays valid
    (mesh,) = trimesh.load(io.BytesIO(data), file_type="glb", process=False).geometry.values()
    assert np.isnan(mesh.vertices).any()
    # Blender 5's importer runs mesh.validate(), which zeroes non-finite positions: a Blender-only
    # probe cannot see this defect (nan_animation_glb is the NaN that survives the import)
    (body,) = _import(bpy, tmp_path / "nan-positions.glb")["MESH"]
    imported = np.array([tuple(v.co) for v in body.data.vertices])
    assert np.isfinite(imported).all()
    assert (imported[: factories.NAN_VERTICES] == 0).all()


def test_nan_animation_glb_deforms_into_nan(tmp_path: Path, bpy) -> None:
    doc, binary = read_glb(factories.nan_animation_glb(tmp_path).read_bytes())
    keys = accessor_array(doc, binary, doc["animations"][0]["samplers"][0]["output"])
    assert not np.isnan(keys[: factories.NAN_KEYS_FROM]).any() and np.isnan(keys[factories.NAN_KEYS_FROM :]).all()
    (body,) = _import(bpy, tmp_path / "nan-animation.glb")["MESH"]
    assert np.isfinite(_evaluated_positions(bpy, body, 0)).all()
    assert np.isnan(_evaluated_positions(bpy, body, 40)).any()


def test_truncated_glb_is_half_a_good_file(tmp_path: Path, bpy) -> None:
    path = factories.truncated_glb(tmp_path)
    good = generate_rig_bytes("arm", 0)
    assert path.read_bytes() == good[: len(good) // 2]
    with pytest.raises(GltfWriteError, match="header says"):
        read_glb(path.read_bytes())
    with pytest.raises(ValueError):
        trimesh.load(path)
    with pytest.raises(RuntimeError, match="Bad GLB"):
        _import(bpy, path)


def test_zero_and_random_bytes(tmp_path: Path, bpy) -> None:
    empty = factories.zero_bytes(tmp_path)
    assert empty.suffix == ".glb" and empty.stat().st_size == 0
    noise = factories.random_bytes(tmp_path, size=1000, seed=7)
    assert noise.read_bytes() == factories.random_bytes(tmp_path / "again", size=1000, seed=7).read_bytes()
    assert noise.stat().st_size == 1000 and noise.read_bytes()[:4] != b"glTF"
    assert noise.read_bytes() != factories.random_bytes(tmp_path / "other", size=1000, seed=8).read_bytes()
    for path in (empty, noise):
        with pytest.raises(RuntimeError, match="Bad glTF"):
            _import(bpy, path)


def test_hanging_asset_is_a_pipe_nobody_writes_to(tmp_path: Path) -> None:
    path = factories.hanging_asset(tmp_path)
    assert path.suffix == ".glb" and stat.S_ISFIFO(path.stat().st_mode)
    # no process has it open for reading or writing, so a blocking open(path, "rb") waits forever;
    # the non-blocking write side shows it without hanging the test
    with pytest.raises(OSError) as raised:
        os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    assert raised.value.errno == errno.ENXIO
