"""The files a glTF names beside itself (buffers and images), and the rule that keeps them in its folder.

glTF 2.0 lets ``buffers[].uri`` and ``images[].uri`` name any URI; Blender's importer reads an absolute
path or a ``..`` path as given, so ``/dev/zero`` would hang it and ``../secret.bin`` would read a file
outside the asset's folder into the scene. Every reader of a glTF (fetch, the Blender session, the
NaN scan) goes through :func:`relative_resource` first. No bpy here.
"""

from __future__ import annotations

import json
import os
import posixpath
import struct
import urllib.parse
from pathlib import Path
from typing import Any

from schemas.assets import RejectReason
from schemas.errors import ReasonError

GLB_MAGIC = b"glTF"
_JSON_CHUNK = 0x4E4F534A


class ResourceOutsideFolder(ReasonError):
    """A glTF names a buffer or image outside its own folder (or not a plain file in it)."""

    def __init__(self, detail: str):
        super().__init__(RejectReason.resource_outside_folder, detail)


def gltf_json(data: bytes) -> dict[str, Any] | None:
    """The JSON document of a .glb (its JSON chunk) or a .gltf; None when it is neither (the importer judges)."""
    try:
        if data[:4] == GLB_MAGIC:
            length, kind = struct.unpack_from("<II", data, 12)
            if kind != _JSON_CHUNK:
                return None
            document = json.loads(data[20 : 20 + length])
        else:
            document = json.loads(data)
    except (ValueError, struct.error):
        return None
    return document if isinstance(document, dict) else None


def read_gltf_json(path: Path) -> dict[str, Any] | None:
    """:func:`gltf_json` of a file, reading only a .glb's header and JSON chunk."""
    with open(path, "rb") as f:
        head = f.read(20)
        if head[:4] == GLB_MAGIC and len(head) == 20:
            (length,) = struct.unpack_from("<I", head, 12)
            return gltf_json(head + f.read(length))
        return gltf_json(head + f.read())


def resource_uris(document: dict[str, Any]) -> list[str]:
    """The URIs of every buffer and image that is not embedded (``data:``), in document order."""
    uris = []
    for key in ("buffers", "images"):
        items = document.get(key)
        for item in items if isinstance(items, list) else []:
            uri = item.get("uri") if isinstance(item, dict) else None
            if isinstance(uri, str) and not uri.startswith("data:"):
                uris.append(uri)
    return uris


def relative_resource(uri: str) -> str:
    """``uri`` as a normalised path inside the glTF's folder; raises :class:`ResourceOutsideFolder` for a
    scheme, an absolute path, ``..`` out of the folder, backslashes or NUL bytes."""
    relative = urllib.parse.unquote(uri)  # URIs are percent-encoded; the importer decodes them too
    normal = posixpath.normpath(relative) if relative else ""
    if (
        not relative
        or urllib.parse.urlsplit(uri).scheme
        or relative.startswith(("/", "\\"))
        or "\\" in relative
        or "\x00" in relative
        or normal in (".", "..")
        or normal.startswith("../")
    ):
        raise ResourceOutsideFolder(f"glTF resource {uri[:120]!r} is not a file inside the asset's folder")
    return normal


def resolve_resource(gltf_path: Path, uri: str) -> Path:
    """The file ``uri`` names beside ``gltf_path``, checked on disk as well: through symbolic links it
    must stay inside the folder, and it must not be a device, FIFO or folder (a missing file is left
    to the importer, which reports it)."""
    folder = os.path.realpath(Path(gltf_path).parent)
    resolved = os.path.realpath(os.path.join(folder, relative_resource(uri)))
    if os.path.commonpath([folder, resolved]) != folder:
        raise ResourceOutsideFolder(f"glTF resource {uri[:120]!r} leads outside the asset's folder through a link")
    if os.path.exists(resolved) and not os.path.isfile(resolved):
        raise ResourceOutsideFolder(f"glTF resource {uri[:120]!r} is not a regular file")
    return Path(resolved)


def check_resources(gltf_path: Path) -> list[Path]:
    """Every external buffer and image of a .glb/.gltf on disk, each checked by :func:`resolve_resource`."""
    document = read_gltf_json(Path(gltf_path))
    return [resolve_resource(gltf_path, uri) for uri in resource_uris(document)] if document else []
