"""A small writer of binary glTF 2.0 (.glb): meshes, node trees, skins and animations.

Only numpy, json and struct. Deterministic: the same calls in the same order give the same bytes.
The writer checks shapes and index ranges (a malformed file would only fail later, inside Blender) but
not values: the test factories rely on it to write NaN positions and weights that do not sum to 1.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

_FLOAT, _UNSIGNED_BYTE, _UNSIGNED_SHORT, _UNSIGNED_INT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_TYPES = {1: "SCALAR", 3: "VEC3", 4: "VEC4", 16: "MAT4"}
_GLB_MAGIC, _GLB_VERSION = b"glTF", 2
_CHUNK_JSON, _CHUNK_BIN = b"JSON", b"BIN\x00"

AnimationPath = Literal["translation", "rotation", "scale"]
_PATH_WIDTH = {"translation": 3, "rotation": 4, "scale": 3}


class GltfWriteError(ValueError):
    """The data handed to the writer cannot make a valid glTF file."""


@dataclass(frozen=True)
class Channel:
    """One animated property of one node, sampled at ``times`` (seconds) with LINEAR interpolation.

    ``values`` is (K, 3) for translation and scale, (K, 4) unit quaternions (x, y, z, w) for rotation.
    """

    node: int
    path: AnimationPath
    times: np.ndarray
    values: np.ndarray


class GlbBuilder:
    """Collects glTF objects and their binary data, then writes one .glb with :meth:`to_bytes`.

    Nodes added without a parent become the roots of the single scene, in the order they were added.
    """

    def __init__(self, generator: str = "kinematicparts gltf_writer") -> None:
        self._doc: dict = {
            "asset": {"version": "2.0", "generator": generator},
            "scene": 0,
            "scenes": [{"nodes": []}],
            "nodes": [],
            "meshes": [],
            "materials": [],
            "skins": [],
            "animations": [],
            "accessors": [],
            "bufferViews": [],
            "buffers": [],
        }
        self._bin = bytearray()
        self._time_accessors: dict[bytes, int] = {}
        self._mesh_joint_counts: list[int | None] = []

    # -- binary data ---------------------------------------------------------------------------
    def _accessor(self, data: np.ndarray, component: int, target: int | None, bounds: bool) -> int:
        data = np.ascontiguousarray(data)
        width = 1 if data.ndim == 1 else int(np.prod(data.shape[1:]))
        while len(self._bin) % 4:  # every bufferView starts 4-byte aligned
            self._bin.append(0)
        view = {"buffer": 0, "byteOffset": len(self._bin), "byteLength": data.nbytes}
        if target is not None:
            view["target"] = target
        self._bin += data.tobytes()
        self._doc["bufferViews"].append(view)
        accessor = {
            "bufferView": len(self._doc["bufferViews"]) - 1,
            "componentType": component,
            "count": int(data.shape[0]),
            "type": _TYPES[width],
        }
        if bounds:
            flat = data.reshape(data.shape[0], width).astype(np.float64)
            # nan-aware so that a file with a few NaN positions (a test factory) still has valid JSON
            accessor["min"] = [float(v) for v in np.nanmin(flat, axis=0)]
            accessor["max"] = [float(v) for v in np.nanmax(flat, axis=0)]
        self._doc["accessors"].append(accessor)
        return len(self._doc["accessors"]) - 1

    # -- objects -------------------------------------------------------------------------------
    def add_material(
        self, name: str, rgba: Sequence[float], metallic: float = 0.0, roughness: float = 0.6
    ) -> int:
        if len(rgba) != 4:
            raise GltfWriteError(f"material {name!r}: base colour needs 4 components, got {len(rgba)}")
        self._doc["materials"].append(
            {
                "name": name,
                "pbrMetallicRoughness": {
                    "baseColorFactor": [float(c) for c in rgba],
                    "metallicFactor": float(metallic),
                    "roughnessFactor": float(roughness),
                },
            }
        )
        return len(self._doc["materials"]) - 1

    def add_mesh(
        self,
        name: str,
        positions: np.ndarray,
        indices: np.ndarray,
        normals: np.ndarray | None = None,
        joints: np.ndarray | None = None,
        weights: np.ndarray | None = None,
        material: int | None = None,
    ) -> int:
        """One triangle primitive. ``joints``/``weights`` are (N, 4): indices into the skin's joints."""
        positions = np.asarray(positions, dtype=np.float32)
        indices = np.asarray(indices)
        n = _check_shape(name, "positions", positions, 3)
        if indices.ndim != 2 or indices.shape[1] != 3 or indices.shape[0] == 0:
            raise GltfWriteError(f"mesh {name!r}: indices must be (M, 3) triangles, got {indices.shape}")
        if indices.min() < 0 or indices.max() >= n:
            raise GltfWriteError(f"mesh {name!r}: triangle indices outside 0..{n - 1}")
        if (joints is None) != (weights is None):
            raise GltfWriteError(f"mesh {name!r}: joints and weights go together")
        if material is not None and not 0 <= material < len(self._doc["materials"]):
            raise GltfWriteError(f"mesh {name!r}: no material {material}")

        index_type, index_component = (np.uint16, _UNSIGNED_SHORT) if n < 65536 else (np.uint32, _UNSIGNED_INT)
        attributes = {"POSITION": self._accessor(positions, _FLOAT, _ARRAY_BUFFER, bounds=True)}
        if normals is not None:
            normals = np.asarray(normals, dtype=np.float32)
            if _check_shape(name, "normals", normals, 3) != n:
                raise GltfWriteError(f"mesh {name!r}: {len(normals)} normals for {n} positions")
            attributes["NORMAL"] = self._accessor(normals, _FLOAT, _ARRAY_BUFFER, bounds=False)
        joint_count = None
        if joints is not None:
            joints = np.asarray(joints)
            weights = np.asarray(weights, dtype=np.float32)
            if _check_shape(name, "joints", joints, 4) != n or _check_shape(name, "weights", weights, 4) != n:
                raise GltfWriteError(f"mesh {name!r}: joints and weights need one row per position")
            if joints.min() < 0:
                raise GltfWriteError(f"mesh {name!r}: negative joint index")
            joint_count = int(joints.max()) + 1
            small = joint_count <= 256
            joint_type, joint_component = (np.uint8, _UNSIGNED_BYTE) if small else (np.uint16, _UNSIGNED_SHORT)
            attributes["JOINTS_0"] = self._accessor(joints.astype(joint_type), joint_component, _ARRAY_BUFFER, False)
            attributes["WEIGHTS_0"] = self._accessor(weights, _FLOAT, _ARRAY_BUFFER, bounds=False)
        primitive = {
            "attributes": attributes,
            "indices": self._accessor(
                indices.astype(index_type).reshape(-1), index_component, _ELEMENT_ARRAY_BUFFER, bounds=False
            ),
            "mode": 4,
        }
        if material is not None:
            primitive["material"] = material
        self._doc["meshes"].append({"name": name, "primitives": [primitive]})
        self._mesh_joint_counts.append(joint_count)
        return len(self._doc["meshes"]) - 1

    def add_node(
        self,
        name: str,
        parent: int | None = None,
        translation: Sequence[float] | None = None,
        rotation: Sequence[float] | None = None,
        mesh: int | None = None,
        skin: int | None = None,
    ) -> int:
        nodes = self._doc["nodes"]
        node: dict = {"name": name}
        if translation is not None:
            node["translation"] = [float(v) for v in translation]
        if rotation is not None:
            node["rotation"] = [float(v) for v in rotation]
        if mesh is not None:
            if not 0 <= mesh < len(self._doc["meshes"]):
                raise GltfWriteError(f"node {name!r}: no mesh {mesh}")
            node["mesh"] = mesh
        if skin is not None:
            if mesh is None or self._mesh_joint_counts[mesh] is None:
                raise GltfWriteError(f"node {name!r}: a skin needs a mesh with joints and weights")
            if not 0 <= skin < len(self._doc["skins"]):
                raise GltfWriteError(f"node {name!r}: no skin {skin}")
            if self._mesh_joint_counts[mesh] > len(self._doc["skins"][skin]["joints"]):
                raise GltfWriteError(f"node {name!r}: mesh refers to joints the skin does not have")
            node["skin"] = skin
        nodes.append(node)
        index = len(nodes) - 1
        if parent is None:
            self._doc["scenes"][0]["nodes"].append(index)
        else:
            if not 0 <= parent < index:
                raise GltfWriteError(f"node {name!r}: parent {parent} must be added before its children")
            nodes[parent].setdefault("children", []).append(index)
        return index

    def add_skin(self, name: str, joints: Sequence[int], inverse_bind_matrices: np.ndarray) -> int:
        """``inverse_bind_matrices`` is (J, 4, 4), row-major as numpy writes them (stored column-major)."""
        ibm = np.asarray(inverse_bind_matrices, dtype=np.float32)
        if ibm.shape != (len(joints), 4, 4):
            raise GltfWriteError(f"skin {name!r}: need ({len(joints)}, 4, 4) inverse bind matrices, got {ibm.shape}")
        if len(set(joints)) != len(joints) or not all(0 <= j < len(self._doc["nodes"]) for j in joints):
            raise GltfWriteError(f"skin {name!r}: joints must be distinct existing nodes")
        column_major = np.ascontiguousarray(ibm.transpose(0, 2, 1)).reshape(len(joints), 16)
        self._doc["skins"].append(
            {
                "name": name,
                "joints": [int(j) for j in joints],
                "inverseBindMatrices": self._accessor(column_major, _FLOAT, None, bounds=False),
            }
        )
        return len(self._doc["skins"]) - 1

    def add_animation(self, name: str, channels: Sequence[Channel]) -> int:
        if not channels:
            raise GltfWriteError(f"animation {name!r} has no channels")
        samplers, targets = [], []
        for channel in channels:
            times = np.asarray(channel.times, dtype=np.float32)
            values = np.asarray(channel.values, dtype=np.float32)
            if times.ndim != 1 or len(times) < 2 or np.any(np.diff(times) <= 0):
                raise GltfWriteError(f"animation {name!r}: times must be at least 2 increasing values")
            if not 0 <= channel.node < len(self._doc["nodes"]):
                raise GltfWriteError(f"animation {name!r}: no node {channel.node}")
            if channel.path not in _PATH_WIDTH:
                raise GltfWriteError(f"animation {name!r}: unsupported path {channel.path!r}")
            if values.shape != (len(times), _PATH_WIDTH[channel.path]):
                raise GltfWriteError(
                    f"animation {name!r}: {channel.path} values must be ({len(times)}, {_PATH_WIDTH[channel.path]})"
                )
            key = times.tobytes()
            if key not in self._time_accessors:  # channels sampled at the same times share one input
                self._time_accessors[key] = self._accessor(times, _FLOAT, None, bounds=True)
            samplers.append(
                {
                    "input": self._time_accessors[key],
                    "output": self._accessor(values, _FLOAT, None, bounds=False),
                    "interpolation": "LINEAR",
                }
            )
            targets.append({"sampler": len(samplers) - 1, "target": {"node": channel.node, "path": channel.path}})
        self._doc["animations"].append({"name": name, "samplers": samplers, "channels": targets})
        return len(self._doc["animations"]) - 1

    # -- output --------------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The glTF document as written (empty top-level lists left out)."""
        doc = {k: v for k, v in self._doc.items() if v != []}
        doc["buffers"] = [{"byteLength": _padded_length(len(self._bin))}]
        return doc

    def to_bytes(self) -> bytes:
        if not self._doc["scenes"][0]["nodes"]:
            raise GltfWriteError("the scene has no nodes")
        text = json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()
        json_chunk = text + b" " * (_padded_length(len(text)) - len(text))
        bin_chunk = bytes(self._bin) + b"\x00" * (_padded_length(len(self._bin)) - len(self._bin))
        total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
        return b"".join(
            (
                _GLB_MAGIC,
                struct.pack("<II", _GLB_VERSION, total),
                struct.pack("<I", len(json_chunk)),
                _CHUNK_JSON,
                json_chunk,
                struct.pack("<I", len(bin_chunk)),
                _CHUNK_BIN,
                bin_chunk,
            )
        )


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """Split a .glb into its JSON document and binary chunk (for checks and tests)."""
    if len(data) < 20 or data[:4] != _GLB_MAGIC:
        raise GltfWriteError("not a binary glTF file")
    _version, total = struct.unpack_from("<II", data, 4)
    if total != len(data):
        raise GltfWriteError(f"header says {total} bytes, file has {len(data)}")
    json_length, chunk_type = struct.unpack_from("<I4s", data, 12)
    if chunk_type != _CHUNK_JSON:
        raise GltfWriteError("first chunk is not JSON")
    doc = json.loads(data[20 : 20 + json_length])
    offset = 20 + json_length
    binary = b""
    if offset + 8 <= len(data):
        bin_length, chunk_type = struct.unpack_from("<I4s", data, offset)
        if chunk_type == _CHUNK_BIN:
            binary = data[offset + 8 : offset + 8 + bin_length]
    return doc, binary


def accessor_array(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """The data of one accessor of a tightly packed file such as this writer makes: (count, width)."""
    accessor = doc["accessors"][index]
    view = doc["bufferViews"][accessor["bufferView"]]
    dtype = {_FLOAT: np.float32, _UNSIGNED_BYTE: np.uint8, _UNSIGNED_SHORT: np.uint16, _UNSIGNED_INT: np.uint32}[
        accessor["componentType"]
    ]
    width = {v: k for k, v in _TYPES.items()}[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    flat = np.frombuffer(binary, dtype=dtype, count=accessor["count"] * width, offset=start)
    return flat.reshape(accessor["count"], width)


def _check_shape(mesh: str, what: str, array: np.ndarray, width: int) -> int:
    if array.ndim != 2 or array.shape[1] != width or array.shape[0] == 0:
        raise GltfWriteError(f"mesh {mesh!r}: {what} must be (N, {width}), got {array.shape}")
    return array.shape[0]


def _padded_length(n: int) -> int:
    return (n + 3) // 4 * 4
