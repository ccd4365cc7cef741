"""Objaverse-XL as a source: its annotation tables -> AssetRefs.

The annotations are the released parquet files, one per source, at
``{download_dir}/{source}/{source}.parquet`` (columns fileIdentifier, source, license, fileType,
sha256, metadata). Online, ``objaverse.xl`` (pinned 0.1.7) loads them and downloads the ones missing;
offline, this module reads them itself and never opens a connection.

File identifiers per source (what :mod:`pipelines.build.fetch` resolves):

- github: ``https://github.com/{org}/{repo}/blob/{commit}/{path}``
- sketchfab: ``https://sketchfab.com/3d-models/{uid}`` (bytes live on the Objaverse 1.0 Hugging Face
  repository, at the path ``object-paths.json.gz`` gives for the uid)
- smithsonian: the download URL of the .glb itself
- thingiverse: ``https://www.thingiverse.com/thing:{thing_id}/files?fileId={file_id}``
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Collection

import pandas as pd

from schemas.assets import AssetRef

OBJAVERSE_SOURCES: tuple[str, ...] = ("github", "sketchfab", "smithsonian", "thingiverse")
ANNOTATION_COLUMNS: tuple[str, ...] = ("fileIdentifier", "source", "license", "fileType", "sha256", "metadata")


class AnnotationsMissing(FileNotFoundError):
    """An annotation parquet is absent and the run is offline."""


def annotations_path(download_dir: Path, source: str) -> Path:
    return Path(download_dir).expanduser() / source / f"{source}.parquet"


def sketchfab_object_paths_file(download_dir: Path) -> Path:
    """Where objaverse 0.1.7 keeps the Sketchfab uid -> repository path index."""
    return Path(download_dir).expanduser() / "hf-objaverse-v1" / "object-paths.json.gz"


def sketchfab_object_index(download_dir: Path, offline: bool = False) -> Path:
    """The Sketchfab object index (for ``FetchConfig.sketchfab_object_paths``), downloaded once by
    objaverse when online and absent."""
    path = sketchfab_object_paths_file(download_dir)
    if not path.is_file():
        if offline:
            raise AnnotationsMissing(f"offline and no Sketchfab object index at {path}")
        import objaverse.xl

        objaverse.xl.SketchfabDownloader.get_uids(download_dir=str(download_dir))
    return path


def _requested(sources: Collection[str] | None) -> list[str]:
    if sources is None:
        return list(OBJAVERSE_SOURCES)
    unknown = sorted(set(sources) - set(OBJAVERSE_SOURCES))
    if unknown:
        raise ValueError(f"unknown Objaverse-XL sources {unknown}; known: {list(OBJAVERSE_SOURCES)}")
    return [s for s in OBJAVERSE_SOURCES if s in sources]


def load_annotations(download_dir: Path, sources: Collection[str] | None = None, offline: bool = False) -> pd.DataFrame:
    """The annotation rows of the requested sources (all four when None), in source order.

    Offline, a missing parquet raises :class:`AnnotationsMissing` naming the file to provide.
    """
    frames = []
    for source in _requested(sources):
        path = annotations_path(download_dir, source)
        if offline:
            if not path.is_file():
                raise AnnotationsMissing(f"offline and no annotations for {source!r} at {path}")
            frame = pd.read_parquet(path)
        else:
            # Imported here: objaverse pulls in fsspec, loguru and requests, which offline runs never need.
            import objaverse.xl

            frame = objaverse.xl.downloaders[source].get_annotations(download_dir=str(download_dir))
        missing = [c for c in ANNOTATION_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"annotations for {source!r} lack columns {missing} (have {list(frame.columns)})")
        frames.append(frame.assign(source=frame["source"].fillna(source)))
    if not frames:
        return pd.DataFrame(columns=list(ANNOTATION_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _metadata(value: Any) -> dict[str, Any]:
    """The metadata column is a JSON string in the released files; keep unreadable text as-is."""
    if isinstance(value, dict):
        return value
    text = _text(value)
    if not text or text == "{}":
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"raw": text}
    return parsed if isinstance(parsed, dict) else {"raw": parsed}


def row_to_asset(row: dict[str, Any]) -> AssetRef:
    """One annotation row -> AssetRef; values are kept as found (the prefilter judges them)."""
    return AssetRef(
        file_identifier=_text(row.get("fileIdentifier")) or "",
        source=_text(row.get("source")) or "",
        license=_text(row.get("license")),
        file_type=(_text(row.get("fileType")) or "").strip().lower().lstrip("."),
        sha256=(_text(row.get("sha256")) or "").strip().lower(),
        metadata=_metadata(row.get("metadata")),
    )


def discover_objaverse(
    download_dir: Path,
    sources: Collection[str] | None = None,
    offline: bool = False,
    file_types: Collection[str] | None = None,
    limit: int | None = None,
) -> list[AssetRef]:
    """Candidates from the Objaverse-XL annotations.

    ``file_types`` narrows the table before any record is built (the full table has ~10M rows, most
    of them formats that cannot hold a rig); rows dropped here are not candidates and get no
    rejection row. ``limit`` keeps the first rows after that, in annotation order.
    """
    frame = load_annotations(download_dir, sources, offline)
    if file_types is not None:
        wanted = {t.lower().lstrip(".") for t in file_types}
        frame = frame[frame["fileType"].astype(str).str.lower().str.lstrip(".").isin(wanted)]
    if limit is not None:
        frame = frame.head(limit)
    columns = list(ANNOTATION_COLUMNS)
    return [row_to_asset(dict(zip(columns, values))) for values in frame[columns].itertuples(index=False, name=None)]
