"""Files a resume reads are written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path | str, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``: a reader (or a resumed
    run) sees the old file or the new one, never half of one, whenever the writer is killed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    return path
