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

from pathlib import Path
from typing import Any, Collection, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.build.prefilter import Scan, annotation_metadata
from schemas.assets import AssetRef
from schemas.prefilter import ANNOTATION_COLUMNS, ANNOTATION_SCHEMA

OBJAVERSE_SOURCES: tuple[str, ...] = ("github", "sketchfab", "smithsonian", "thingiverse")
BATCH_ROWS = 65_536  # rows read at a time: bounds what one batch holds (metadata strings included)
READ_BUFFER_BYTES = 1 << 20


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


def _annotation_file(download_dir: Path, source: str, offline: bool) -> Path:
    """The parquet of ``source``; online, objaverse downloads it once when it is absent."""
    path = annotations_path(download_dir, source)
    if not path.is_file():
        if offline:
            raise AnnotationsMissing(f"offline and no annotations for {source!r} at {path}")
        # Imported here: objaverse pulls in fsspec, loguru and requests, which offline runs never need.
        import objaverse.xl

        objaverse.xl.downloaders[source].get_annotations(download_dir=str(download_dir))
        if not path.is_file():
            raise AnnotationsMissing(f"objaverse fetched the {source!r} annotations but not to {path}")
    columns = pq.read_schema(path).names
    missing = [c for c in ANNOTATION_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"annotations for {source!r} at {path} lack columns {missing} (have {columns})")
    return path


def annotation_scan(
    download_dir: Path,
    sources: Collection[str] | None = None,
    offline: bool = False,
    file_types: Collection[str] | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Scan:
    """A re-readable stream of the annotation rows of the requested sources (all four when None), in
    source order, as Arrow batches of at most ``batch_rows`` (what the prefilter reads).

    Every file is found (or, online, downloaded) and checked before this returns, so a missing one
    fails at once. ``file_types`` narrows the rows before anything else looks at them (the full table
    has ~10M rows, most of them formats that cannot hold a rig); rows dropped here are not candidates
    and get no rejection row.
    """
    files = [(source, _annotation_file(download_dir, source, offline)) for source in _requested(sources)]
    wanted = None if file_types is None else pa.array(sorted({t.lower().lstrip(".") for t in file_types}), pa.string())

    def scan() -> Iterator[pa.RecordBatch]:
        for source, path in files:
            # Buffered reads, no pre-buffering: pre-buffering kept whole column chunks and the driver's
            # peak memory grew with the file (measured in docs/sources.md); this way it stays flat.
            annotations = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
            for batch in annotations.iter_batches(batch_size=batch_rows, columns=list(ANNOTATION_COLUMNS)):
                yield _conformed(batch, source, wanted)

    return scan


def _conformed(batch: pa.RecordBatch, source: str, wanted: pa.Array | None) -> pa.RecordBatch:
    """One batch as ANNOTATION_SCHEMA: every column a string, a missing source filled in."""
    columns = {name: pc.cast(batch.column(name), pa.string()) for name in ANNOTATION_COLUMNS}
    columns["source"] = pc.fill_null(columns["source"], source)
    columns["local_path"] = pa.nulls(batch.num_rows, pa.string())
    conformed = pa.RecordBatch.from_arrays([columns[f.name] for f in ANNOTATION_SCHEMA], schema=ANNOTATION_SCHEMA)
    if wanted is None:
        return conformed
    kind = pc.utf8_ltrim(pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(columns["fileType"], ""))), characters=".")
    return conformed.filter(pc.is_in(kind, wanted))


def load_annotations(download_dir: Path, sources: Collection[str] | None = None, offline: bool = False) -> pd.DataFrame:
    """The annotation rows of the requested sources, whole, as a DataFrame (for a look at a small
    table; a build streams them with :func:`annotation_scan`).

    Offline, a missing parquet raises :class:`AnnotationsMissing` naming the file to provide.
    """
    scan = annotation_scan(download_dir, sources, offline)
    return pa.Table.from_batches(list(scan()), schema=ANNOTATION_SCHEMA).select(list(ANNOTATION_COLUMNS)).to_pandas()


def row_to_asset(row: dict[str, Any]) -> AssetRef:
    """One annotation row -> AssetRef; values are kept as found (the prefilter judges them)."""
    text = {k: (None if row.get(k) is None else str(row.get(k))) for k in ANNOTATION_COLUMNS}
    return AssetRef(
        file_identifier=text["fileIdentifier"] or "",
        source=text["source"] or "",
        license=text["license"],
        file_type=(text["fileType"] or "").strip().lower().lstrip("."),
        sha256=(text["sha256"] or "").strip().lower(),
        metadata=annotation_metadata(row.get("metadata")),
    )


def discover_objaverse(
    download_dir: Path,
    sources: Collection[str] | None = None,
    offline: bool = False,
    file_types: Collection[str] | None = None,
    limit: int | None = None,
) -> list[AssetRef]:
    """Candidates from the Objaverse-XL annotations as AssetRefs, the first ``limit`` in annotation
    order (a small table; a build streams the rows through the prefilter instead)."""
    assets: list[AssetRef] = []
    for batch in annotation_scan(download_dir, sources, offline, file_types)():
        assets += [row_to_asset(row) for row in batch.slice(0, None if limit is None else limit - len(assets)).to_pylist()]
        if limit is not None and len(assets) >= limit:
            break
    return assets
