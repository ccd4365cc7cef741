"""Files a resume or a reader reads are written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``: a reader (or a resumed
    run) sees the old file or the new one, never half of one, whenever the writer is killed. The sibling
    has a unique name, so concurrent writers of one path (threads or processes) never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with open(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(partial, 0o644)  # mkstemp makes it private; the file it replaces was not
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return path


def append_line(path: Path | str, line: str) -> None:
    """Append one line to a log a resume reads and appends to (JSON lines). A writer killed mid-line
    leaves an unterminated tail: it is cut off before the next line goes in, so every complete line
    stays readable. The line goes out in one ``write`` to a file opened for appending."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, _complete_length(fd, size))
        os.write(fd, (line.rstrip("\n") + "\n").encode())
    finally:
        os.close(fd)


def complete_lines(path: Path | str) -> list[str]:
    """The lines of a file written with :func:`append_line`, without an unterminated last one."""
    text = Path(path).read_text()
    lines = text.split("\n")
    return lines[:-1]  # the last piece is "" after a final newline, or a torn line


def _complete_length(fd: int, size: int) -> int:
    """Bytes up to and including the last newline."""
    block = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def keep_newest(folder: Path | str, pattern: str, keep: int) -> int:
    """Delete all but the ``keep`` newest files of ``folder`` matching ``pattern``; returns how many went."""
    folder = Path(folder)
    found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for old in found[keep:]:
        old.unlink(missing_ok=True)
    return max(0, len(found) - keep)


class FolderRefused(Exception):
    """An output folder that a write must not replace; the message says what to do."""


def replace_problem(out: Path, marker: str, what: str) -> str | None:
    """Why ``out`` may not be replaced by a new ``what``, or None: absent, or a previous one (it holds
    ``marker``, written last). Anything else is someone's folder and is left as it is."""
    if out.is_symlink():
        return f"{out} is a symbolic link; give the folder itself, or another --out"
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} exists and is not a folder; choose another --out"
    if not (out / marker).is_file():
        return (f"{out} exists and is not a previous {what} (it has no {marker}); it was left as it is: "
                "choose another --out, or remove the folder yourself")
    return None


@contextlib.contextmanager
def folder_swapped_in(out: Path | str, marker: str, what: str, refused: type[Exception] = FolderRefused) -> Iterator[Path]:
    """Yield a fresh sibling folder to write ``what`` into; when the block ends, write ``marker`` in it
    and swap it in for ``out`` (the previous one renamed aside, then deleted). A crash never leaves a
    folder that looks done, and only a previous ``what`` is ever replaced (checked before and after
    the block: the folder may change meanwhile)."""
    out = Path(out).absolute()
    if problem := replace_problem(out, marker, what):
        raise refused(problem)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield staging
        (staging / marker).write_text(f"a complete {what}: a later one may replace it\n")
        if problem := replace_problem(out, marker, what):
            raise refused(problem)
        previous = None
        if out.exists():
            # rename(2) may replace an empty folder: this reserved name cannot be taken meanwhile
            previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".previous", dir=out.parent))
            os.rename(out, previous)
        os.rename(staging, out)
        if previous is not None:
            shutil.rmtree(previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
