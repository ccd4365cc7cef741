"""Count non-finite floats in a glTF file's accessors before Blender sees them.

Blender's glTF importer validates meshes on import and silently replaces NaN positions with zeros, so
after the import a corrupt file looks clean; only the file's own data can tell. Reads .glb (binary
chunk) and .gltf (base64 data URIs or .bin files beside it); sparse accessors are not supported and
count as clean.
"""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import numpy as np

from pipelines.build.gltf_uris import GLB_MAGIC, gltf_json, resolve_resource

_FLOAT = 5126
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def count_nonfinite(path: str | Path) -> int:
    """Number of NaN or infinite values over every float accessor of the file."""
    path = Path(path)
    document, buffers = _load(path)
    views = document.get("bufferViews", [])
    total = 0
    for accessor in document.get("accessors", []):
        if accessor.get("componentType") != _FLOAT or "bufferView" not in accessor:
            continue
        view = views[accessor["bufferView"]]
        width = _WIDTH[accessor["type"]]
        count = accessor["count"]
        data = buffers[view.get("buffer", 0)]
        start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
        stride = view.get("byteStride") or 4 * width
        if count == 0:
            continue
        needed = start + stride * (count - 1) + 4 * width
        if needed > len(data):
            raise ValueError(f"accessor reads past the end of buffer {view.get('buffer', 0)}")
        window = np.frombuffer(data, dtype=np.uint8, count=needed - start, offset=start)
        rows = np.lib.stride_tricks.as_strided(window, shape=(count, 4 * width), strides=(stride, 1), writeable=False)
        values = np.ascontiguousarray(rows).view("<f4")
        total += int((~np.isfinite(values)).sum())
    return total


def _load(path: Path) -> tuple[dict, list[bytes]]:
    raw = path.read_bytes()
    document = gltf_json(raw)
    if document is None:
        raise ValueError(f"{path.name} is not a glTF document")
    binary = b""
    if raw[:4] == GLB_MAGIC:
        offset = 20 + struct.unpack_from("<I", raw, 12)[0]
        if offset + 8 <= len(raw):
            length = struct.unpack_from("<I", raw, offset)[0]
            binary = raw[offset + 8 : offset + 8 + length]
    return document, [binary if "uri" not in b else _uri(path, b["uri"]) for b in document.get("buffers", [])]


def _uri(path: Path, uri: str) -> bytes:
    if uri.startswith("data:"):
        return base64.b64decode(uri.split(",", 1)[1])
    return resolve_resource(path, uri).read_bytes()
