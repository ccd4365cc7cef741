"""Files a resume or a reader reads are written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
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
