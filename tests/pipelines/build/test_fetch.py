"""Fetch over real protocols on loopback: HTTP(S) sources, git over file:// and http://, local files."""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import pickle
from pathlib import Path

import pytest

from pipelines.build.content import file_sha256
from pipelines.build.fetch import FetchCache, FetchConfig, FetchError, NodeFetcher, fetch, gltf_resources, redact
from schemas.fetch import FetchSettings
from schemas.assets import AssetRef, RejectReason
from tests.netfixtures import (  # noqa: F401 (fixtures)
    LoopbackServer,
    Reply,
    git_root,
    github_identifier,
    http_server,
    lfs_pointer,
    make_git_repo,
    sha256_of,
)

pytestmark = pytest.mark.timeout(60)

GLB = b"glTF\x02\x00\x00\x00" + bytes(range(256)) * 8
SMITHSONIAN_ID = "https://3d-api.si.edu/content/document/3d_package:0a1b/resources/figure-150k.glb"
SMITHSONIAN_PATH = "/content/document/3d_package:0a1b/resources/figure-150k.glb"


def asset(identifier: str, source: str, content: bytes | str, file_type: str = "glb", **extra) -> AssetRef:
    sha = content if isinstance(content, str) else sha256_of(content)
    return AssetRef(file_identifier=identifier, source=source, license="by", file_type=file_type, sha256=sha, **extra)


@pytest.fixture
def cache(tmp_path: Path) -> FetchCache:
    return FetchCache(tmp_path / "cache")


@pytest.fixture
def config(http_server: LoopbackServer, git_root: Path) -> FetchConfig:
    return FetchConfig(
        connect_timeout=1, read_timeout=0.5, attempt_seconds=5, retries=2, backoff_seconds=0.01,
        git_timeout=10, github_base=f"file://{git_root}", smithsonian_base=http_server.base,
        thingiverse_base=http_server.base, sketchfab_base=http_server.url("/hf"),
    )


def leftovers(cache: FetchCache) -> list[Path]:
    """Temp files, staging folders and git scratch space that a fetch must not leave behind."""
    parts = [p for p in cache.root.rglob("*") if p.name.endswith(".part")]
    scratch = cache.root / ".scratch"
    return parts + (list(scratch.iterdir()) if scratch.exists() else [])


# ---------------------------------------------------------------- HTTP


def test_http_object_lands_in_cache_once_and_is_served_from_it(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(GLB))
    first = fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    second = fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    expected = cache.root / sha256_of(GLB)[:2] / f"{sha256_of(GLB)}.glb"
    assert first.local_path == second.local_path == str(expected)
    assert expected.read_bytes() == GLB
    assert http_server.hits[SMITHSONIAN_PATH] == 1
    assert leftovers(cache) == []


def test_corrupt_cache_entry_is_fetched_again(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(GLB))
    path = Path(fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config).local_path)
    path.write_bytes(GLB[:-1] + b"\x00")
    again = fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    assert Path(again.local_path).read_bytes() == GLB
    assert http_server.hits[SMITHSONIAN_PATH] == 2


def test_wrong_bytes_are_a_hash_mismatch_and_never_cached(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(GLB + b"tampered"))
    with pytest.raises(FetchError) as error:
        fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    assert error.value.reason is RejectReason.hash_mismatch
    assert sha256_of(GLB + b"tampered") in error.value.detail
    assert not cache.path_for(sha256_of(GLB), "glb").exists()
    assert leftovers(cache) == []


def test_missing_object_fails_at_once_with_its_status(cache, config, http_server):
    with pytest.raises(FetchError) as error:
        fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    assert error.value.reason is RejectReason.download_failed
    assert "HTTP 404" in error.value.detail
    assert http_server.hits[SMITHSONIAN_PATH] == 1  # a 404 is not retried


@pytest.mark.parametrize("reply", [Reply(GLB, stall=30), Reply(GLB, delay=30)], ids=["stalls-mid-body", "never-answers"])
def test_slow_server_trips_the_read_timeout_on_every_bounded_attempt(cache, config, http_server, reply):
    http_server.add(SMITHSONIAN_PATH, reply)
    with pytest.raises(FetchError) as error:
        fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    assert error.value.reason is RejectReason.download_failed
    assert "after 3 attempts" in error.value.detail and "timed out" in error.value.detail.lower()
    assert http_server.hits[SMITHSONIAN_PATH] == 3
    assert leftovers(cache) == []


def test_transient_failures_are_retried_until_the_object_arrives(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(GLB, truncate=True), Reply(b"busy", status=503), Reply(GLB))
    fetched = fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config)
    assert Path(fetched.local_path).read_bytes() == GLB
    assert http_server.hits[SMITHSONIAN_PATH] == 3


def test_empty_and_oversized_objects_are_refused(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(b""))
    with pytest.raises(FetchError) as empty:
        fetch(asset(SMITHSONIAN_ID, "smithsonian", sha256_of(b"")), cache, config)
    assert empty.value.reason is RejectReason.empty_file
    http_server.add(SMITHSONIAN_PATH, Reply(GLB))
    with pytest.raises(FetchError) as large:
        fetch(asset(SMITHSONIAN_ID, "smithsonian", GLB), cache, config.model_copy(update={"max_bytes": 100}))
    assert large.value.reason is RejectReason.download_failed and "larger than 100 bytes" in large.value.detail


def test_credentials_never_reach_details_or_logs(cache, config, http_server, caplog):
    http_server.add(SMITHSONIAN_PATH, Reply(b"busy", status=503))
    secret_base = http_server.base.replace("http://", "http://alice:s3cret-pass@")
    identifier = SMITHSONIAN_ID + "?token=tok-123&X-Amz-Signature=sig-456&view=1"
    with caplog.at_level(logging.WARNING, logger="pipelines.build.fetch"), pytest.raises(FetchError) as error:
        fetch(asset(identifier, "smithsonian", GLB), cache, config.model_copy(update={"smithsonian_base": secret_base}))
    seen = error.value.detail + "\n" + caplog.text
    assert "retry 1" in caplog.text and "view=1" in seen
    for secret in ("s3cret-pass", "tok-123", "sig-456"):
        assert secret not in seen


def test_redact_removes_userinfo_and_token_parameters():
    text = "fatal: https://bob:ghp_abc@github.com/o/r.git?access_token=xyz&ref=main failed"
    assert redact(text) == "fatal: https://***@github.com/o/r.git?access_token=***&ref=main failed"


def test_sketchfab_object_resolves_through_the_object_index(cache, config, http_server, tmp_path):
    uid = "8476c4170df24cf5bbe6967222d1a42d"
    index = tmp_path / "object-paths.json.gz"
    index.write_bytes(gzip.compress(json.dumps({uid: f"glbs/000-042/{uid}.glb"}).encode()))
    http_server.add(f"/hf/glbs/000-042/{uid}.glb", Reply(GLB))
    config = config.model_copy(update={"sketchfab_object_paths": str(index)})
    fetched = fetch(asset(f"https://sketchfab.com/3d-models/{uid}", "sketchfab", GLB), cache, config)
    assert Path(fetched.local_path).read_bytes() == GLB
    with pytest.raises(FetchError) as error:
        fetch(asset("https://sketchfab.com/3d-models/" + "f" * 32, "sketchfab", b"other"), cache, config)
    assert error.value.reason is RejectReason.download_failed and "not in the object index" in error.value.detail


def test_thingiverse_object_downloads_by_file_id(cache, config, http_server):
    stl = b"solid cube\nendsolid cube\n"
    http_server.add("/download:4567", Reply(stl))
    identifier = "https://www.thingiverse.com/thing:123/files?fileId=4567"
    fetched = fetch(asset(identifier, "thingiverse", stl, file_type="stl"), cache, config)
    assert Path(fetched.local_path).read_bytes() == stl


def test_concurrent_fetchers_of_one_object_download_it_once(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(GLB, delay=0.3))
    item = asset(SMITHSONIAN_ID, "smithsonian", GLB)
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        paths = [a.local_path for a in pool.starmap(fetch, [(item, cache, config)] * 3)]
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == GLB
    assert http_server.hits[SMITHSONIAN_PATH] == 1
    assert leftovers(cache) == []


def test_fetch_falls_back_to_other_copies_of_the_same_bytes(cache, config, http_server):
    http_server.add("/copy-b.glb", Reply(GLB))
    copies = [{"fileIdentifier": "https://3d-api.si.edu/copy-a.glb", "source": "smithsonian"},
              {"fileIdentifier": "https://3d-api.si.edu/copy-b.glb", "source": "smithsonian"}]
    item = asset(SMITHSONIAN_ID, "smithsonian", GLB, metadata={"duplicate_copies": copies})
    fetched = fetch(item, cache, config)
    assert Path(fetched.local_path).read_bytes() == GLB
    assert fetched.metadata["fetched_from"] == "https://3d-api.si.edu/copy-b.glb"
    assert fetched.file_identifier == SMITHSONIAN_ID
    assert http_server.hits[SMITHSONIAN_PATH] == http_server.hits["/copy-a.glb"] == 1


def test_when_every_copy_fails_the_first_places_reason_is_raised(cache, config, http_server):
    http_server.add(SMITHSONIAN_PATH, Reply(GLB + b"x"))
    item = asset(SMITHSONIAN_ID, "smithsonian", GLB,
                 metadata={"duplicate_copies": [{"fileIdentifier": "https://3d-api.si.edu/gone.glb", "source": "smithsonian"}]})
    with pytest.raises(FetchError) as error:
        fetch(item, cache, config)
    assert error.value.reason is RejectReason.hash_mismatch
    assert error.value.detail.endswith("(and 1 other copies failed)")


# ---------------------------------------------------------------- git


def test_github_object_comes_from_its_own_commit(cache, config, git_root):
    old, new = GLB, GLB + b"v2"
    first, _ = make_git_repo(git_root, "octo", "rigs", [{"models/fox.glb": old}, {"models/fox.glb": new}])
    fetched = fetch(asset(github_identifier("octo", "rigs", first, "models/fox.glb"), "github", old), cache, config)
    assert Path(fetched.local_path).read_bytes() == old
    assert Path(fetched.local_path).is_relative_to(cache.root)
    assert leftovers(cache) == []


def test_deleted_repository_fails_fast(cache, config):
    identifier = github_identifier("gone", "nowhere", "a" * 40, "model.glb")
    with pytest.raises(FetchError) as error:
        fetch(asset(identifier, "github", GLB), cache, config)
    assert error.value.reason is RejectReason.download_failed and "git fetch failed" in error.value.detail
    assert leftovers(cache) == []


def test_repository_asking_for_credentials_fails_instead_of_prompting(cache, config, http_server):
    # GitHub answers 401 for deleted or private repositories; git would then ask for a password.
    http_server.add("/gone/private.git/info/refs", Reply(status=401, headers={"WWW-Authenticate": 'Basic realm="GitHub"'}))
    identifier = github_identifier("gone", "private", "b" * 40, "model.glb")
    with pytest.raises(FetchError) as error:
        fetch(asset(identifier, "github", GLB), cache, config.model_copy(update={"github_base": http_server.base}))
    assert error.value.reason is RejectReason.download_failed
    assert "terminal prompts disabled" in error.value.detail
    assert http_server.hits["/gone/private.git/info/refs"] >= 1


@pytest.mark.parametrize(
    ("read_timeout", "git_timeout", "expected"),
    [(0.5, 20.0, "Operation too slow"), (30.0, 1.5, "timed out after 1.5s")],
    ids=["low-speed-limit", "process-group-killed"],
)
def test_hanging_git_server_never_hangs_the_fetch(cache, config, http_server, read_timeout, git_timeout, expected):
    http_server.add("/slow/repo.git/info/refs", Reply(delay=60))
    identifier = github_identifier("slow", "repo", "c" * 40, "model.glb")
    update = {"github_base": http_server.base, "git_timeout": git_timeout, "read_timeout": read_timeout}
    with pytest.raises(FetchError) as error:
        fetch(asset(identifier, "github", GLB), cache, config.model_copy(update=update))
    assert error.value.reason is RejectReason.download_failed and expected in error.value.detail
    assert leftovers(cache) == []


def test_lfs_pointer_instead_of_content_is_a_reason_not_a_file(cache, config, git_root):
    (commit,) = make_git_repo(git_root, "octo", "lfs", [{"big.fbx": lfs_pointer(GLB), ".gitattributes": b"*.fbx filter=lfs\n"}])
    with pytest.raises(FetchError) as error:
        fetch(asset(github_identifier("octo", "lfs", commit, "big.fbx"), "github", GLB, file_type="fbx"), cache, config)
    assert error.value.reason is RejectReason.download_failed and "git-lfs pointer" in error.value.detail
    assert not cache.path_for(sha256_of(GLB), "fbx").exists()


def test_path_missing_from_the_commit_fails(cache, config, git_root):
    (commit,) = make_git_repo(git_root, "octo", "small", [{"a.glb": GLB}])
    with pytest.raises(FetchError) as error:
        fetch(asset(github_identifier("octo", "small", commit, "b.glb"), "github", GLB), cache, config)
    assert error.value.reason is RejectReason.download_failed and "git cat-file failed" in error.value.detail


@pytest.mark.parametrize(
    "identifier",
    [
        "https://github.com/octo/rigs/tree/" + "a" * 40 + "/x.glb",
        "https://github.com/octo/rigs/blob/main/x.glb",
        "https://github.com/octo/../blob/" + "a" * 40 + "/x.glb",
        "https://github.com/octo/rigs/blob/" + "a" * 40 + "/../../etc/passwd",
        "http://github.com/octo/rigs/blob/" + "a" * 40 + "/x.glb",
    ],
)
def test_malformed_github_identifiers_are_bad_annotations(cache, config, identifier):
    with pytest.raises(FetchError) as error:
        fetch(asset(identifier, "github", GLB), cache, config)
    assert error.value.reason is RejectReason.bad_annotation


def gltf_document(*uris: str) -> bytes:
    return json.dumps({"asset": {"version": "2.0"}, "buffers": [{"uri": uris[0], "byteLength": 4}],
                       "images": [{"uri": u} for u in uris[1:]]}).encode()


def test_linked_gltf_arrives_with_its_buffers_and_images(cache, config, git_root):
    gltf = gltf_document("linked.bin", "tex/skin%20a.png", "data:image/png;base64,AAAA")
    files = {"models/linked.gltf": gltf, "models/linked.bin": b"\x01\x02\x03\x04", "models/tex/skin a.png": b"png!"}
    (commit,) = make_git_repo(git_root, "octo", "linked", [files])
    fetched = fetch(asset(github_identifier("octo", "linked", commit, "models/linked.gltf"), "github", gltf, file_type="gltf"), cache, config)
    path = Path(fetched.local_path)
    assert path == cache.bundle_for(sha256_of(gltf)) / f"{sha256_of(gltf)}.gltf"
    assert path.read_bytes() == gltf
    assert (path.parent / "linked.bin").read_bytes() == b"\x01\x02\x03\x04"
    assert (path.parent / "tex" / "skin a.png").read_bytes() == b"png!"
    again = fetch(asset("https://elsewhere.invalid/x.gltf", "github", gltf, file_type="gltf"), cache, config)
    assert again.local_path == str(path)  # found by content, no transfer


@pytest.mark.parametrize("uri", ["../outside.bin", "/etc/passwd", "http://example.com/a.bin", "a/../../b.bin"])
def test_gltf_resources_outside_the_model_folder_are_refused(uri):
    with pytest.raises(FetchError) as error:
        gltf_resources(gltf_document(uri))
    assert error.value.reason is RejectReason.resource_outside_folder


def test_embedded_gltf_has_no_resources(shared_gltf):
    assert gltf_resources((shared_gltf / "SimpleSkin.gltf").read_bytes()) == []


# ---------------------------------------------------------------- local and procedural


@pytest.mark.parametrize("source", ["local", "procedural"])
def test_local_file_is_copied_into_the_cache(cache, config, tmp_path, shared_gltf, source):
    original = tmp_path / "incoming" / "CesiumMan.glb"
    original.parent.mkdir()
    original.write_bytes((shared_gltf / "CesiumMan.glb").read_bytes())
    content = original.read_bytes()
    fetched = fetch(asset("CesiumMan.glb", source, content, local_path=str(original)), cache, config)
    original.unlink()  # a worker's temp folder going away must not take the cached copy with it
    assert Path(fetched.local_path).read_bytes() == content
    assert Path(fetched.local_path).is_relative_to(cache.root)


def test_local_gltf_with_external_buffer_is_bundled(cache, config, tmp_path):
    folder = tmp_path / "assets"
    (folder / "bin").mkdir(parents=True)
    gltf = gltf_document("bin/mesh.bin")
    (folder / "rig.gltf").write_bytes(gltf)
    (folder / "bin" / "mesh.bin").write_bytes(b"MESH")
    fetched = fetch(asset("rig.gltf", "local", gltf, file_type="gltf", local_path=str(folder / "rig.gltf")), cache, config)
    assert (Path(fetched.local_path).parent / "bin" / "mesh.bin").read_bytes() == b"MESH"
    (folder / "bin" / "mesh.bin").unlink()
    other = gltf_document("bin/mesh.bin") + b" "
    (folder / "rig2.gltf").write_bytes(other)
    with pytest.raises(FetchError) as error:
        fetch(asset("rig2.gltf", "local", other, file_type="gltf", local_path=str(folder / "rig2.gltf")), cache, config)
    assert error.value.reason is RejectReason.file_missing
    assert not cache.bundle_for(sha256_of(other)).exists() and leftovers(cache) == []


def test_local_file_problems_have_reasons(cache, config, tmp_path):
    wrong = tmp_path / "wrong.glb"
    wrong.write_bytes(GLB + b"edited")
    empty = tmp_path / "empty.glb"
    empty.write_bytes(b"")
    cases = [
        (asset("wrong.glb", "local", GLB, local_path=str(wrong)), RejectReason.hash_mismatch),
        (asset("gone.glb", "local", GLB, local_path=str(tmp_path / "gone.glb")), RejectReason.file_missing),
        (asset("empty.glb", "local", sha256_of(b""), local_path=str(empty)), RejectReason.empty_file),
        (asset("x.glb", "local", "../../etc/passwd"), RejectReason.bad_annotation),
        (asset("x.glb", "local", GLB, file_type="glb/../x"), RejectReason.bad_annotation),
    ]
    for item, reason in cases:
        with pytest.raises(FetchError) as error:
            fetch(item, cache, config)
        assert error.value.reason is reason, item
    assert leftovers(cache) == []


# ---------------------------------------------------------------- a render worker's fetcher


def _local_assets(folder: Path, n: int) -> list[AssetRef]:
    folder.mkdir(parents=True, exist_ok=True)
    assets = []
    for i in range(n):
        path = folder / f"a{i}.glb"
        path.write_bytes(b"glTF" + bytes([i]) * (1000 * (i + 1)))
        assets.append(AssetRef(file_identifier=path.as_uri(), source="local", file_type="glb",
                               sha256=file_sha256(path), local_path=str(path)))
    return assets


def _objects(cache_dir: Path) -> set[str]:
    return {p.name.split(".")[0] for p in cache_dir.rglob("*.glb")}


def test_decided_downloads_are_evicted_oldest_first_past_the_cap(tmp_path):
    assets = _local_assets(tmp_path / "source", 3)  # 1, 2 and 3 KB
    fetcher = NodeFetcher(str(tmp_path / "cache"), FetchSettings(cache_max_gb=4500 / 2**30))
    first, second = fetcher.fetch(assets[0]), fetcher.fetch(assets[1])
    assert fetcher.release(first) == 0 and fetcher.release(second) == 0  # 3 KB cached: under the cap
    third = fetcher.fetch(assets[2])
    assert _objects(tmp_path / "cache") == {a.sha256 for a in assets}
    evicted = fetcher.release(third)  # 6 KB, over 4.5: the oldest decided ones go until it fits
    assert _objects(tmp_path / "cache") == {assets[2].sha256} and evicted >= 3000
    assert all(Path(a.local_path).exists() for a in assets)  # the sources themselves are never touched


def test_a_cap_of_zero_evicts_each_download_once_decided_and_keep_downloads_keeps_them(tmp_path):
    assets = _local_assets(tmp_path / "source", 2)
    for keep, left in ((False, set()), (True, {a.sha256 for a in assets})):
        cache = tmp_path / f"cache-{keep}"
        fetcher = NodeFetcher(str(cache), FetchSettings(cache_max_gb=0, keep_downloads=keep))
        for a in assets:
            fetcher.release(fetcher.fetch(a))
        assert _objects(cache) == left


def test_a_file_outside_the_cache_is_never_evicted(tmp_path):
    import pickle

    (asset,) = _local_assets(tmp_path / "source", 1)
    fetcher = pickle.loads(pickle.dumps(  # as a Ray actor gets it
        NodeFetcher(str(tmp_path / "cache"), FetchSettings(cache_max_gb=0))))
    assert fetcher.release(asset) == 0 and Path(asset.local_path).exists()
