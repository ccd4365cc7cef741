"""Content identity: an asset is its bytes' sha256, wherever it came from."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (raises ``OSError`` for a missing or unreadable file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
