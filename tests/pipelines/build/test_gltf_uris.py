"""The folder rule for glTF buffers and images, without Blender."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from pipelines.build.gltf_uris import (
    ResourceOutsideFolder,
    check_resources,
    gltf_json,
    relative_resource,
    resolve_resource,
)
from schemas.assets import RejectReason


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("mesh.bin", "mesh.bin"), ("tex/skin%20a.png", "tex/skin a.png"), ("./a/../b.bin", "b.bin"), ("a/b/../c.png", "a/c.png")],
)
def test_paths_inside_the_folder_are_kept_normalised(uri: str, expected: str) -> None:
    assert relative_resource(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["/dev/zero", "../secret.bin", "a/../../secret.bin", "%2E%2E/secret.bin", "%2Fetc%2Fpasswd", "file:///dev/zero",
     "http://example.com/a.bin", "C:\\secret.bin", "..\\secret.bin", "a\x00.bin", "", ".", ".."],
)
def test_everything_else_is_refused_with_its_reason(uri: str) -> None:
    with pytest.raises(ResourceOutsideFolder) as error:
        relative_resource(uri)
    assert error.value.reason is RejectReason.resource_outside_folder


def glb_with(document: dict) -> bytes:
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    return b"glTF" + struct.pack("<II", 2, 20 + len(text)) + struct.pack("<I", len(text)) + b"JSON" + text


def test_a_glb_names_external_files_too(tmp_path: Path) -> None:
    path = tmp_path / "model.glb"
    path.write_bytes(glb_with({"asset": {"version": "2.0"}, "buffers": [{"byteLength": 4}, {"uri": "/dev/zero", "byteLength": 4}]}))
    assert gltf_json(path.read_bytes())["buffers"][1]["uri"] == "/dev/zero"
    with pytest.raises(ResourceOutsideFolder):
        check_resources(path)


def test_links_and_special_files_are_checked_where_they_lead(tmp_path: Path) -> None:
    folder = tmp_path / "asset"
    (folder / "tex").mkdir(parents=True)
    (tmp_path / "secret.bin").write_bytes(b"secret")
    (folder / "mesh.bin").write_bytes(b"MESH")
    (folder / "alias.bin").symlink_to("mesh.bin")
    (folder / "escape.bin").symlink_to(tmp_path / "secret.bin")
    (folder / "tex" / "up").symlink_to("..")
    (folder / "zero.bin").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.bin")
    gltf = folder / "model.gltf"
    assert resolve_resource(gltf, "alias.bin") == (folder / "mesh.bin").resolve()
    assert resolve_resource(gltf, "tex/up/mesh.bin") == (folder / "mesh.bin").resolve()  # a loop back inside is fine
    assert resolve_resource(gltf, "missing.bin") == (folder / "missing.bin").resolve()  # the importer reports it
    for uri in ("escape.bin", "zero.bin", "pipe.bin", "tex"):
        with pytest.raises(ResourceOutsideFolder):
            resolve_resource(gltf, uri)


def test_files_that_are_not_gltf_json_have_no_resources(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gltf"
    junk.write_bytes(b"\x00\x01 not json")
    assert check_resources(junk) == []
    assert gltf_json(b"glTF\x02\x00\x00\x00") is None
