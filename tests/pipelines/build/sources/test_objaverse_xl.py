"""Objaverse-XL annotations in the released layout -> discovery -> prefilter -> fetch, on loopback."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.build.fetch import FetchCache, FetchConfig, FetchError, fetch
from pipelines.build.prefilter import prefilter
from pipelines.build.sources.objaverse_xl import (
    AnnotationsMissing,
    discover_objaverse,
    load_annotations,
    sketchfab_object_index,
    sketchfab_object_paths_file,
)
from schemas.assets import RejectReason
from schemas.prefilter import PrefilterRules
from tests.netfixtures import (  # noqa: F401 (fixtures)
    Reply,
    annotation_row,
    git_root,
    http_server,
    loopback_only,
    make_git_repo,
    sha256_of,
    write_objaverse_annotations,
)

pytestmark = pytest.mark.timeout(60)

FOX = b"glTF\x02\x00\x00\x00fox" * 40
FIGURE = b"glTF\x02\x00\x00\x00figure" * 40
KAYA = b"Kaydara FBX Binary  \x00kaya" * 30
DRAGON = b"glTF\x02\x00\x00\x00dragon" * 40
MAMMOTH = b"glTF\x02\x00\x00\x00mammoth" * 40
UID_FOX, UID_DRAGON, UID_GONE = "0c3b0f5a6b1e4a5c9d1f2e3a4b5c6d7e", "9f8e7d6c5b4a39281706f5e4d3c2b1a0", "ffffffffffffffffffffffffffffffff"
SMITHSONIAN_MAMMOTH = "https://3d-api.si.edu/content/document/3d_package:d8c62be9/resources/mammoth-150k.glb"


def sample_rows(commit: str = "0" * 40) -> list[dict]:
    github = "https://github.com/{}/{}/blob/{}/{}"
    return [
        annotation_row(github.format("octo", "rigs", commit, "animals/fox.glb"), "github", "MIT License", "glb", FOX,
                       {"github_organization": "octo", "github_repo": "rigs"}),
        annotation_row(github.format("octo", "rigs", commit, "people/kaya.fbx"), "github", "apache-2.0", "fbx", KAYA),
        annotation_row(github.format("octo", "rigs", commit, "props/crate.obj"), "github", "MIT License", "obj", b"crate"),
        annotation_row(github.format("copycat", "forks", commit, "fox.glb"), "github", "MIT License", "glb", FOX),
        annotation_row(f"https://sketchfab.com/3d-models/{UID_FOX}", "sketchfab", "by", "glb", FOX),
        annotation_row(f"https://sketchfab.com/3d-models/{UID_DRAGON}", "sketchfab", "by-nc", "glb", DRAGON),
        annotation_row(f"https://sketchfab.com/3d-models/{UID_GONE}", "sketchfab", "cc0", "glb", b"vanished"),
        annotation_row(SMITHSONIAN_MAMMOTH, "smithsonian", "CC0", "glb", MAMMOTH),
        annotation_row("https://www.thingiverse.com/thing:1234/files?fileId=5678", "thingiverse",
                       "Creative Commons - Attribution", "stl", b"solid"),
        annotation_row(github.format("octo", "rigs", commit, "people/figure.glb"), "github", None, "glb", FIGURE),
    ]


def test_offline_load_reads_the_released_layout_without_network(tmp_path, loopback_only):
    write_objaverse_annotations(tmp_path, sample_rows())
    frame = load_annotations(tmp_path, offline=True)
    assert list(frame["source"].unique()) == ["github", "sketchfab", "smithsonian", "thingiverse"]
    assert len(frame) == 10
    only = load_annotations(tmp_path, sources=["smithsonian"], offline=True)
    assert only["fileIdentifier"].tolist() == [SMITHSONIAN_MAMMOTH]


def test_offline_with_a_missing_file_says_which(tmp_path, loopback_only):
    write_objaverse_annotations(tmp_path, [r for r in sample_rows() if r["source"] != "sketchfab"])
    with pytest.raises(AnnotationsMissing, match="sketchfab"):
        load_annotations(tmp_path, offline=True)


def test_online_load_uses_objaverse_and_reads_present_files_without_fetching(tmp_path, loopback_only):
    write_objaverse_annotations(tmp_path, sample_rows())
    online = load_annotations(tmp_path, sources=["github", "sketchfab"], offline=False)
    offline = load_annotations(tmp_path, sources=["github", "sketchfab"], offline=True)
    columns = ["fileIdentifier", "source", "license", "fileType", "sha256"]
    pd.testing.assert_frame_equal(online[columns], offline[columns])


def test_sketchfab_object_index_is_found_or_named_when_missing_offline(tmp_path, loopback_only):
    with pytest.raises(AnnotationsMissing, match="object-paths.json.gz"):
        sketchfab_object_index(tmp_path, offline=True)
    path = sketchfab_object_paths_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b"{}"))
    assert sketchfab_object_index(tmp_path, offline=False) == path  # present: no download, even online


def test_bad_requests_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="objaverse"):
        load_annotations(tmp_path, sources=["objaverse"], offline=True)
    path = tmp_path / "github" / "github.parquet"
    path.parent.mkdir()
    pd.DataFrame({"fileIdentifier": ["x"], "sha256": ["y"]}).to_parquet(path)
    with pytest.raises(ValueError, match="lack columns"):
        load_annotations(tmp_path, sources=["github"], offline=True)


def test_rows_map_to_asset_refs(tmp_path):
    rows = sample_rows()
    rows[0]["fileType"] = ".GLB"
    rows[1]["metadata"] = "not json"
    write_objaverse_annotations(tmp_path, rows)
    assets = discover_objaverse(tmp_path, sources=["github"], offline=True)
    fox, kaya = assets[0], assets[1]
    assert (fox.file_identifier, fox.source, fox.license, fox.file_type, fox.sha256) == (
        rows[0]["fileIdentifier"], "github", "MIT License", "glb", sha256_of(FOX))
    assert fox.metadata == {"github_organization": "octo", "github_repo": "rigs"}
    assert kaya.metadata == {"raw": "not json"}
    assert assets[-1].license is None  # null in parquet, not the string "None"


def test_discovery_narrows_by_file_type_and_limit(tmp_path):
    write_objaverse_annotations(tmp_path, sample_rows())
    glbs = discover_objaverse(tmp_path, offline=True, file_types=["glb", "fbx"])
    assert {a.file_type for a in glbs} == {"glb", "fbx"} and len(glbs) == 8
    assert [a.file_identifier for a in discover_objaverse(tmp_path, offline=True, limit=2)] == [
        r["fileIdentifier"] for r in sample_rows()[:2]]


def test_annotations_to_cached_files_end_to_end(tmp_path, git_root, http_server, loopback_only):
    """The path a build takes: discover -> prefilter -> fetch, every source over a real protocol."""
    (commit,) = make_git_repo(git_root, "octo", "rigs", [
        {"animals/fox.glb": FOX, "people/kaya.fbx": KAYA, "people/figure.glb": FIGURE, "props/crate.obj": b"crate"}])
    download_dir = tmp_path / "objaverse"
    write_objaverse_annotations(download_dir, sample_rows(commit))
    index = sketchfab_object_paths_file(download_dir)
    index.parent.mkdir(parents=True)
    index.write_bytes(gzip.compress(json.dumps(
        {UID_FOX: f"glbs/000-001/{UID_FOX}.glb", UID_DRAGON: f"glbs/000-002/{UID_DRAGON}.glb",
         UID_GONE: f"glbs/000-003/{UID_GONE}.glb"}).encode()))
    http_server.add(f"/hf/glbs/000-001/{UID_FOX}.glb", Reply(FOX))
    http_server.add("/content/document/3d_package:d8c62be9/resources/mammoth-150k.glb", Reply(MAMMOTH))
    config = FetchConfig(connect_timeout=1, read_timeout=1, retries=1, backoff_seconds=0.01, git_timeout=20,
                         github_base=f"file://{git_root}", sketchfab_base=http_server.url("/hf"),
                         sketchfab_object_paths=str(sketchfab_object_index(download_dir, offline=True)),
                         smithsonian_base=http_server.base)

    candidates = discover_objaverse(download_dir, offline=True)
    accepted, rejections = prefilter(candidates, PrefilterRules())
    assert {r.file_identifier.rsplit("/", 1)[-1]: r.reason for r in rejections} == {
        "crate.obj": RejectReason.unsupported_file_type,
        "fox.glb": RejectReason.duplicate,  # octo/rigs: same bytes as copycat/forks, kept (first by name)
        UID_FOX: RejectReason.duplicate,  # same bytes again on Sketchfab
        UID_DRAGON: RejectReason.licence_not_allowed,
        "files?fileId=5678": RejectReason.unsupported_file_type,
        "figure.glb": RejectReason.unknown_licence,
    }

    cache = FetchCache(tmp_path / "cache")
    fetched, failures = [], {}
    for asset in accepted:
        try:
            fetched.append(fetch(asset, cache, config))
        except FetchError as error:
            failures[asset.file_identifier] = error.reason
    assert failures == {f"https://sketchfab.com/3d-models/{UID_GONE}": RejectReason.download_failed}
    assert sorted(Path(a.local_path).name for a in fetched) == sorted(
        [f"{sha256_of(FOX)}.glb", f"{sha256_of(KAYA)}.fbx", f"{sha256_of(MAMMOTH)}.glb"])
    for asset in fetched:
        path = Path(asset.local_path)
        assert path.is_relative_to(cache.root) and sha256_of(path.read_bytes()) == asset.sha256
    assert {a.license for a in fetched} == {"MIT", "Apache-2.0", "CC0-1.0"}
    # The kept fox is the copycat fork, whose repository does not exist: its copy in octo/rigs served it.
    (fox,) = [a for a in fetched if a.sha256 == sha256_of(FOX)]
    assert fox.file_identifier.startswith("https://github.com/copycat/forks/")
    assert fox.metadata["fetched_from"] == f"https://github.com/octo/rigs/blob/{commit}/animals/fox.glb"
