"""The .glb writer: exact round trips of every array, valid GLB framing, determinism, clear errors."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import trimesh

from pipelines.build.sources.gltf_writer import Channel, GlbBuilder, GltfWriteError, accessor_array, read_glb

POSITIONS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
TRIANGLES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
JOINTS = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
WEIGHTS = np.array([[1, 0, 0, 0], [0.25, 0.75, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32)


def _tetra_glb() -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """A skinned tetrahedron on two joints with one rotation and one translation channel."""
    builder = GlbBuilder()
    material = builder.add_material("grey", (0.5, 0.5, 0.5, 1.0))
    root = builder.add_node("root", translation=(0, 0, 0))
    child = builder.add_node("child", parent=root, translation=(0, 1, 0))
    inverse_bind = np.tile(np.eye(4), (2, 1, 1))
    inverse_bind[1, :3, 3] = (0, -1, 0)
    skin = builder.add_skin("armature", [root, child], inverse_bind)
    normals = POSITIONS - POSITIONS.mean(axis=0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    mesh = builder.add_mesh("tetra", POSITIONS, TRIANGLES, normals, JOINTS, WEIGHTS, material)
    builder.add_node("tetra", mesh=mesh, skin=skin)
    times = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    rotations = np.array([[0, 0, 0, 1], [0, 0, 0.38268343, 0.9238795], [0, 0, 0, 1]], dtype=np.float32)
    translations = np.array([[0, 1, 0], [0, 1.5, 0], [0, 1, 0]], dtype=np.float32)
    builder.add_animation("bend", [Channel(child, "rotation", times, rotations)])
    builder.add_animation("lift", [Channel(child, "translation", times, translations)])
    return builder.to_bytes(), inverse_bind, rotations, translations


def test_every_array_reads_back_exactly() -> None:
    data, inverse_bind, rotations, translations = _tetra_glb()
    doc, binary = read_glb(data)
    primitive = doc["meshes"][0]["primitives"][0]
    attributes = primitive["attributes"]
    np.testing.assert_array_equal(accessor_array(doc, binary, attributes["POSITION"]), POSITIONS)
    np.testing.assert_array_equal(accessor_array(doc, binary, attributes["JOINTS_0"]), JOINTS)
    np.testing.assert_array_equal(accessor_array(doc, binary, attributes["WEIGHTS_0"]), WEIGHTS)
    np.testing.assert_array_equal(accessor_array(doc, binary, primitive["indices"]).reshape(-1, 3), TRIANGLES)
    stored = accessor_array(doc, binary, doc["skins"][0]["inverseBindMatrices"]).reshape(2, 4, 4)
    np.testing.assert_array_equal(stored.transpose(0, 2, 1), inverse_bind)  # glTF matrices are column-major
    bend, lift = doc["animations"]
    np.testing.assert_array_equal(accessor_array(doc, binary, bend["samplers"][0]["output"]), rotations)
    np.testing.assert_array_equal(accessor_array(doc, binary, lift["samplers"][0]["output"]), translations)
    assert bend["samplers"][0]["input"] == lift["samplers"][0]["input"]  # same times, one accessor
    assert bend["channels"][0]["target"] == {"node": 1, "path": "rotation"}
    assert doc["accessors"][attributes["POSITION"]]["min"] == [0, 0, 0]
    assert doc["accessors"][attributes["POSITION"]]["max"] == [1, 1, 1]
    assert doc["nodes"][0]["children"] == [1] and doc["scenes"][0]["nodes"] == [0, 2]


def test_glb_framing_is_valid() -> None:
    data, *_ = _tetra_glb()
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    json_length, json_type = struct.unpack_from("<I4s", data, 12)
    bin_length, bin_type = struct.unpack_from("<I4s", data, 20 + json_length)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    assert (json_type, bin_type) == (b"JSON", b"BIN\x00")
    assert json_length % 4 == 0 and bin_length % 4 == 0
    assert 20 + json_length + 8 + bin_length == len(data)
    doc, _ = read_glb(data)
    assert doc["buffers"] == [{"byteLength": bin_length}]
    assert all(view["byteOffset"] % 4 == 0 for view in doc["bufferViews"])
    assert all(view["byteOffset"] + view["byteLength"] <= bin_length for view in doc["bufferViews"])


def test_same_calls_give_same_bytes() -> None:
    assert _tetra_glb()[0] == _tetra_glb()[0]


def test_trimesh_loads_the_mesh() -> None:
    data, *_ = _tetra_glb()
    scene = trimesh.load(io.BytesIO(data), file_type="glb")
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) == len(TRIANGLES)
    assert mesh.is_watertight and mesh.volume == pytest.approx(1 / 6, rel=1e-6)  # outward winding


def test_nan_positions_keep_the_json_valid() -> None:
    builder = GlbBuilder()
    positions = POSITIONS.copy()
    positions[0] = np.nan
    builder.add_node("tetra", mesh=builder.add_mesh("tetra", positions, TRIANGLES))
    doc, binary = read_glb(builder.to_bytes())
    assert doc["accessors"][0]["min"] == [0, 0, 0] and doc["accessors"][0]["max"] == [1, 1, 1]
    assert np.isnan(accessor_array(doc, binary, 0)[0]).all()


def _builder_with_mesh() -> tuple[GlbBuilder, int]:
    builder = GlbBuilder()
    mesh = builder.add_mesh("tetra", POSITIONS, TRIANGLES)
    builder.add_node("tetra", mesh=mesh)
    return builder, mesh


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b, m: b.add_mesh("bad", POSITIONS[:, :2], TRIANGLES), "positions must be"),
        (lambda b, m: b.add_mesh("bad", POSITIONS, TRIANGLES + 1), "outside"),
        (lambda b, m: b.add_mesh("bad", POSITIONS, TRIANGLES, joints=JOINTS), "go together"),
        (lambda b, m: b.add_mesh("bad", POSITIONS, TRIANGLES, material=3), "no material"),
        (lambda b, m: b.add_node("n", mesh=m, skin=0), "needs a mesh with joints"),
        (lambda b, m: b.add_node("n", parent=5), "must be added before"),
        (lambda b, m: b.add_skin("s", [7], np.eye(4)[None]), "existing nodes"),
        (lambda b, m: b.add_animation("a", []), "no channels"),
        (
            lambda b, m: b.add_animation("a", [Channel(0, "rotation", np.array([0.0, 0.0]), np.zeros((2, 4)))]),
            "increasing",
        ),
        (
            lambda b, m: b.add_animation("a", [Channel(0, "rotation", np.array([0.0, 1.0]), np.zeros((2, 3)))]),
            "values must be",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, message: str) -> None:
    builder, mesh = _builder_with_mesh()
    with pytest.raises(GltfWriteError, match=message):
        call(builder, mesh)


def test_empty_scene_and_bad_files_are_clear_errors() -> None:
    with pytest.raises(GltfWriteError, match="no nodes"):
        GlbBuilder().to_bytes()
    with pytest.raises(GltfWriteError, match="not a binary glTF"):
        read_glb(b"PK\x03\x04" + bytes(40))
    data, *_ = _tetra_glb()
    with pytest.raises(GltfWriteError, match="header says"):
        read_glb(data[:-4])
