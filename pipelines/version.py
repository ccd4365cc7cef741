"""The code version recorded with every row and checkpoint."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a hash of the source that decides what a sample or a checkpoint is."""
    try:
        version = metadata.version("kinematicparts")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    digest = hashlib.sha256()
    for package in ("schemas", "pipelines", "models"):
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(path.relative_to(_ROOT).as_posix().encode())
            digest.update(path.read_bytes())
    return f"{version}+{digest.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def probe_version() -> str:
    """A hash of the code that decides a probe report (the Blender stage package and the report's
    schema): a stored probe is reused, by every render configuration, while this holds."""
    digest = hashlib.sha256()
    for path in [*sorted((_ROOT / "pipelines" / "build" / "blender").rglob("*.py")), _ROOT / "schemas" / "assets.py"]:
        digest.update(path.relative_to(_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
