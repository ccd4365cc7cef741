"""The local-folder source: content hashes, file URIs, licences from sidecars or LICENSES.json,
deterministic order, and files that must be skipped without reading them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pipelines.build.sources.local import LocalSourceError, discover_local
from tests.factories import good_glb, hanging_asset, random_bytes, zero_bytes


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    good_glb(root, "arm", 0)  # good-arm-0.glb
    good_glb(root / "sub", "snake", 1)  # sub/good-snake-1.glb
    random_bytes(root, name="Robot.FBX")
    zero_bytes(root, name="empty.glb")
    (root / "scene.blend").write_bytes(b"BLENDER-v300")
    (root / "notes.txt").write_text("not an asset")
    random_bytes(root / ".cache", name="hidden.glb")
    hanging_asset(root)  # hanging.glb, a named pipe: opening it would block forever
    sidecar = "SPDX-FileCopyrightText: 2024 Someone\nSPDX-License-Identifier: CC-BY-4.0\n"
    (root / "good-arm-0.glb.license").write_text(sidecar)
    (root / "scene.blend.license").write_text("CC0-1.0\n")
    (root / "LICENSES.json").write_text(json.dumps({"sub/good-snake-1.glb": "MIT", "good-arm-0.glb": "ignored"}))
    return root


def test_finds_asset_files_in_a_stable_order(folder: Path) -> None:
    refs = discover_local(folder)
    assert [r.metadata["relative_path"] for r in refs] == [
        "Robot.FBX",
        "empty.glb",
        "good-arm-0.glb",
        "scene.blend",
        "sub/good-snake-1.glb",
    ]
    assert [r.model_dump() for r in discover_local(folder)] == [r.model_dump() for r in refs]


def test_identity_is_the_content_hash_and_the_file_uri(folder: Path) -> None:
    for ref in discover_local(folder):
        path = folder.resolve() / ref.metadata["relative_path"]
        data = path.read_bytes()
        assert ref.sha256 == hashlib.sha256(data).hexdigest()
        assert ref.file_identifier == path.as_uri() and ref.file_identifier.startswith("file:///")
        assert ref.local_path == str(path)
        assert ref.source == "local"
        assert ref.metadata["size"] == len(data)
    by_name = {r.metadata["relative_path"]: r for r in discover_local(folder)}
    assert by_name["Robot.FBX"].file_type == "fbx"
    assert by_name["empty.glb"].sha256 == hashlib.sha256(b"").hexdigest()  # fetch rejects it as empty_file


def test_licence_from_sidecar_then_licenses_json_else_none(folder: Path) -> None:
    licences = {r.metadata["relative_path"]: r.license for r in discover_local(folder)}
    assert licences == {
        "Robot.FBX": None,
        "empty.glb": None,
        "good-arm-0.glb": "CC-BY-4.0",  # the sidecar wins over LICENSES.json
        "scene.blend": "CC0-1.0",
        "sub/good-snake-1.glb": "MIT",
    }


def test_patterns_choose_the_suffixes(folder: Path) -> None:
    refs = discover_local(folder, patterns=("glb",))
    assert [r.metadata["relative_path"] for r in refs] == ["empty.glb", "good-arm-0.glb", "sub/good-snake-1.glb"]
    assert discover_local(folder, patterns=(".dae",)) == []


def test_a_relative_folder_gives_absolute_identifiers(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder.parent)
    refs = discover_local(Path("assets"))
    assert [r.model_dump() for r in refs] == [r.model_dump() for r in discover_local(folder)]


def test_bad_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(LocalSourceError, match="does not exist"):
        discover_local(tmp_path / "missing")
    (tmp_path / "file.glb").write_bytes(b"x")
    with pytest.raises(LocalSourceError, match="not a folder"):
        discover_local(tmp_path / "file.glb")
    (tmp_path / "LICENSES.json").write_text("{not json")
    with pytest.raises(LocalSourceError, match="not readable JSON"):
        discover_local(tmp_path)
    (tmp_path / "LICENSES.json").write_text(json.dumps({"file.glb": 3}))
    with pytest.raises(LocalSourceError, match="must map"):
        discover_local(tmp_path)


def test_shared_samples(shared_gltf: Path) -> None:
    refs = discover_local(shared_gltf)
    names = [Path(r.local_path).name for r in refs]
    assert names == sorted(["CesiumMan.glb", "Fox.glb", "RiggedFigure.glb", "RiggedSimple.glb", "SimpleSkin.gltf"])
    assert [r.file_type for r in refs] == ["glb", "glb", "glb", "glb", "gltf"]
    cesium = refs[0]
    assert cesium.sha256 == hashlib.sha256((shared_gltf / "CesiumMan.glb").read_bytes()).hexdigest()
