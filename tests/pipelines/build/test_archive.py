"""safe_extract: good archives come out byte for byte; unsafe ones are refused before any write."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipelines.build.archive import UnsafeArchiveError, safe_extract
from schemas.assets import RejectReason


def make_zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def written(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def test_zip_extracts_every_member_exactly(tmp_path):
    members = [("rig/model.fbx", b"FBX" * 100), ("rig/textures/skin.png", b"\x89PNG"), ("readme.txt", b"")]
    dest = tmp_path / "out"
    paths = safe_extract(make_zip(tmp_path / "a.zip", members), dest)
    assert paths == [dest / name for name, _ in members]
    assert [p.read_bytes() for p in paths] == [data for _, data in members]


def test_tar_extracts_files_and_links_that_stay_inside(tmp_path):
    members = [("pack/model.glb", b"glTF"), link("pack/latest.glb", "model.glb"),
               link("pack/copy.glb", "pack/model.glb", tarfile.LNKTYPE)]
    dest = tmp_path / "out"
    safe_extract(make_tar(tmp_path / "a.tar.gz", members), dest)
    assert (dest / "pack/latest.glb").is_symlink() and (dest / "pack/latest.glb").read_bytes() == b"glTF"
    assert (dest / "pack/copy.glb").read_bytes() == b"glTF"


@pytest.mark.parametrize(
    "members",
    [
        [("ok.txt", b"fine"), ("../evil.txt", b"escaped")],
        [("ok.txt", b"fine"), ("sub/../../evil.txt", b"escaped")],
        [("/tmp/evil.txt", b"absolute")],
        [("ok.txt", b"fine"), link("up", "../..")],
        [("ok.txt", b"fine"), link("abs", "/etc/passwd")],
        [("ok.txt", b"fine"), link("sub", "."), ("sub/x.txt", b"through a link")],
        [("ok.txt", b"fine"), link("hard", "/etc/passwd", tarfile.LNKTYPE)],
        [("ok.txt", b"fine"), link("hard", "../outside.txt", tarfile.LNKTYPE)],
        [("ok.txt", b"fine"), ("ok.txt", b"again")],
        [("ok.txt", b"fine"), link("fifo", "", tarfile.FIFOTYPE)],
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink-up", "symlink-absolute", "member-below-symlink",
         "hardlink-absolute", "hardlink-outside", "duplicate", "fifo"],
)
def test_unsafe_tar_is_refused_before_anything_is_written(tmp_path, members):
    dest = tmp_path / "box" / "out"
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract(make_tar(tmp_path / "bad.tar.gz", members), dest)
    assert error.value.reason is RejectReason.unsafe_archive
    assert written(tmp_path / "box") == []


@pytest.mark.parametrize(
    ("members", "symlinks"),
    [
        ([("ok.txt", b"fine"), ("../evil.txt", b"escaped")], None),
        ([("C:/windows/evil.txt", b"drive")], None),
        ([("..\\evil.txt", b"backslash")], None),
        ([("ok.txt", b"fine")], {"link": "../../etc"}),
    ],
    ids=["dotdot", "drive-letter", "backslash", "symlink-up"],
)
def test_unsafe_zip_is_refused_before_anything_is_written(tmp_path, members, symlinks):
    dest = tmp_path / "box" / "out"
    with pytest.raises(UnsafeArchiveError) as error:
        safe_extract(make_zip(tmp_path / "bad.zip", members, symlinks), dest)
    assert error.value.reason is RejectReason.unsafe_archive
    assert written(tmp_path / "box") == []
    assert not (tmp_path / "evil.txt").exists()


def test_existing_symlink_in_destination_cannot_carry_members_out(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "textures").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(make_zip(tmp_path / "a.zip", [("textures/skin.png", b"png")]), dest)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_zip_bomb_and_unreadable_archives_are_refused(tmp_path):
    big = make_zip(tmp_path / "big.zip", [("zeros.bin", bytes(10_000))])
    with pytest.raises(UnsafeArchiveError, match="more than 1000"):
        safe_extract(big, tmp_path / "out", max_bytes=1000)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(make_tar(tmp_path / "x.tar.gz", [("a.txt", b"a" * 5000)]).read_bytes()[:60])
    with pytest.raises(UnsafeArchiveError):
        safe_extract(broken, tmp_path / "out2")
    assert written(tmp_path / "out") == [] and written(tmp_path / "out2") == []
