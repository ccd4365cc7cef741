"""The local-folder source: every asset file under a folder, identified by the sha256 of its bytes.

A file's licence comes from a sidecar ``<file name>.license`` (the REUSE convention: a plain SPDX id or
an ``SPDX-License-Identifier:`` line), else from a ``LICENSES.json`` in the folder mapping paths
relative to the folder to licence ids, else it is None (the prefilter decides what unknown means).
Only regular files are read: a named pipe or socket with an asset's name would block the reader.
"""

from __future__ import annotations


import json
import logging
import stat
from pathlib import Path
from typing import Iterable

from pipelines.build.content import file_sha256
from schemas.assets import AssetRef

SOURCE = "local"
PATTERNS = (".glb", ".gltf", ".fbx", ".dae", ".blend")
LICENSES_FILE = "LICENSES.json"
_SPDX_TAG = "SPDX-License-Identifier:"

log = logging.getLogger(__name__)


class LocalSourceError(ValueError):
    """The folder cannot be used as a source (missing, not a folder, malformed LICENSES.json)."""


def discover_local(folder: Path, patterns: Iterable[str] = PATTERNS) -> list[AssetRef]:
    """Every regular file under ``folder`` (recursively, hidden entries skipped) whose suffix is in
    ``patterns`` (case-insensitive), sorted by its path relative to ``folder``."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise LocalSourceError(f"local source folder {root} does not exist or is not a folder")
    suffixes = {p.lower() if p.startswith(".") else f".{p.lower()}" for p in patterns}
    licences = _licence_map(root)
    assets = []
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        if path.suffix.lower() not in suffixes or any(part.startswith(".") for part in relative.split("/")):
            continue
        try:
            status = path.stat()
            if not stat.S_ISREG(status.st_mode):
                log.warning("skipping %s: not a regular file", path)
                continue
            digest = file_sha256(path)
            sidecar = _sidecar_licence(path)
        except OSError as error:  # unreadable or vanished mid-scan: skip it, keep the rest
            log.warning("skipping %s: %s", path, error)
            continue
        assets.append(
            AssetRef(
                file_identifier=path.as_uri(),
                source=SOURCE,
                license=sidecar if sidecar is not None else licences.get(relative),
                file_type=path.suffix.lower().lstrip("."),
                sha256=digest,
                metadata={"relative_path": relative, "size": status.st_size},
                local_path=str(path),
            )
        )
    return assets


def _sidecar_licence(path: Path) -> str | None:
    sidecar = path.with_name(path.name + ".license")
    if not sidecar.is_file():
        return None
    for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith(_SPDX_TAG):
            return line[len(_SPDX_TAG) :].strip() or None
        if line and not line.startswith("#") and ":" not in line:
            return line
    return None


def _licence_map(root: Path) -> dict[str, str]:
    path = root / LICENSES_FILE
    if not path.is_file():
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LocalSourceError(f"{path} is not readable JSON: {error}") from error
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise LocalSourceError(f"{path} must map relative file paths to licence ids (strings)")
    return {Path(k).as_posix().removeprefix("./"): v for k, v in mapping.items()}
