"""Safe extraction of zip and tar archives: every member is checked before anything is written.

Refused (``UnsafeArchiveError``, reason ``unsafe_archive``): absolute names, names with ``..`` that
leave the destination, backslashes or NUL bytes, the same name twice, device files and FIFOs,
members below a symlink member, symlinks whose target is absolute or uses ``..`` (links may only
point down into their own folder, which keeps every chain of links inside the destination), hard
links to anything but an earlier regular member, names that an existing symlink in the destination
would carry outside it, and archives larger than ``max_bytes`` or ``max_members`` (zip bombs). An
archive that cannot be read is refused too: it cannot be checked.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from schemas.assets import RejectReason


class UnsafeArchiveError(Exception):
    reason = RejectReason.unsafe_archive

    def __init__(self, detail: str):
        super().__init__(f"unsafe_archive: {detail}")
        self.detail = detail


@dataclass(frozen=True)
class _Member:
    name: str  # normalised, relative, "/"-separated
    kind: str  # "file", "dir", "symlink", "hardlink"
    size: int = 0
    target: str = ""  # link target as stored


def _normalise(name: str) -> str:
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"member name {name[:120]!r} is empty or has a backslash or NUL")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"member {name[:120]!r} has an absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise UnsafeArchiveError(f"member {name[:120]!r} leaves the destination")
    return normal


def _check(members: list[_Member], dest: Path, max_bytes: int, max_members: int) -> None:
    if len(members) > max_members:
        raise UnsafeArchiveError(f"{len(members)} members, more than {max_members}")
    total = sum(m.size for m in members)
    if total > max_bytes:
        raise UnsafeArchiveError(f"{total} bytes unpacked, more than {max_bytes}")
    seen: dict[str, _Member] = {}
    root = os.path.realpath(dest)
    for member in members:
        if member.name in seen and not (member.kind == "dir" and seen[member.name].kind == "dir"):
            raise UnsafeArchiveError(f"{member.name!r} appears twice")
        parents = Path(member.name).parents
        for parent in list(parents)[:-1]:
            if seen.get(parent.as_posix(), _Member("", "")).kind == "symlink":
                raise UnsafeArchiveError(f"{member.name!r} lies below the symlink {parent.as_posix()!r}")
        if member.kind == "symlink":
            target = member.target
            if not target or target.startswith("/") or "\\" in target or ".." in target.split("/"):
                raise UnsafeArchiveError(f"symlink {member.name!r} -> {target[:120]!r} may point outside")
        if member.kind == "hardlink":
            linked = seen.get(_normalise(member.target))
            if linked is None or linked.kind != "file":
                raise UnsafeArchiveError(f"hard link {member.name!r} -> {member.target[:120]!r} is not an earlier file")
        resolved = os.path.realpath(os.path.join(root, member.name))
        if os.path.commonpath([root, resolved]) != root:
            raise UnsafeArchiveError(f"{member.name!r} would be written outside {dest} through an existing link")
        seen[member.name] = member


def _tar_members(archive: tarfile.TarFile) -> list[_Member]:
    members = []
    for info in archive.getmembers():
        name = _normalise(info.name)
        if info.isreg():
            members.append(_Member(name, "file", info.size))
        elif info.isdir():
            members.append(_Member(name, "dir"))
        elif info.issym():
            members.append(_Member(name, "symlink", target=info.linkname))
        elif info.islnk():
            members.append(_Member(name, "hardlink", target=info.linkname))
        else:
            raise UnsafeArchiveError(f"{info.name[:120]!r} is a device file or FIFO")
    return members


def _zip_members(archive: zipfile.ZipFile) -> list[_Member]:
    members = []
    for info in archive.infolist():
        name = _normalise(info.filename)
        mode = info.external_attr >> 16
        if info.is_dir():
            members.append(_Member(name, "dir"))
        elif stat.S_ISLNK(mode):
            target = archive.read(info).decode("utf-8", errors="replace") if info.file_size <= 4096 else ""
            members.append(_Member(name, "symlink", target=target))
        else:
            members.append(_Member(name, "file", info.file_size))
    return members


def _extract_zip(archive: zipfile.ZipFile, members: list[_Member], dest: Path) -> None:
    for info, member in zip(archive.infolist(), members):
        path = dest / member.name
        if member.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if member.kind == "symlink":
            os.symlink(member.target, path)
            continue
        with archive.open(info) as src, open(path, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def safe_extract(archive: Path, dest: Path, max_bytes: int = 4 << 30, max_members: int = 100_000) -> list[Path]:
    """Extract a zip or tar(.gz/.bz2/.xz) into ``dest`` after checking every member.

    Returns the extracted files and links (not folders) in archive order.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = _zip_members(zf)
                _check(members, dest, max_bytes, max_members)
                dest.mkdir(parents=True, exist_ok=True)
                _extract_zip(zf, members, dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = _tar_members(tf)
                _check(members, dest, max_bytes, max_members)
                dest.mkdir(parents=True, exist_ok=True)
                tf.extractall(dest, filter="data")  # the stdlib's own checks, a second line of defence
        else:
            raise UnsafeArchiveError(f"{archive.name} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"{archive.name} could not be read: {type(exc).__name__}: {exc}"[:300]) from None
    return [dest / m.name for m in members if m.kind != "dir"]
