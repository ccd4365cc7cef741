"""Prefilter rules: what may go on to be fetched, decided on annotations alone."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
from pydantic import BaseModel, Field, field_validator

from schemas.assets import Rejection

# Formats whose files can hold an armature with skinned meshes and Blender imports natively.
RIG_FILE_TYPES: frozenset[str] = frozenset({"glb", "gltf", "fbx", "blend"})

# Formats that hold rigs but that this Blender cannot read: refused at the prefilter with their own
# reason (``no_blender_importer``), before anything is fetched.
NO_BLENDER_IMPORTER: dict[str, str] = {"dae": "Blender 5.0 removed its Collada (.dae) importer"}

# Licences that allow training and redistribution of renders without share-alike or
# non-commercial terms. Share-alike, NC, ND and copyleft licences are opt-in.
PERMISSIVE_LICENCES: frozenset[str] = frozenset(
    {
        "CC0-1.0",
        "CC-BY-2.0",
        "CC-BY-2.5",
        "CC-BY-3.0",
        "CC-BY-4.0",
        "MIT",
        "MIT-0",
        "Apache-2.0",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "0BSD",
        "ISC",
        "Zlib",
        "Unlicense",
        "BSL-1.0",
    }
)


class PrefilterRules(BaseModel):
    """Which candidates are worth fetching.

    ``sources`` None means every source. ``allow_unlicensed_local`` lets files of the ``local``
    source without a licence string through (they are the user's own files); a local file that
    *does* name a licence is still checked against ``licences``. Procedural assets are CC0-1.0.
    """

    file_types: list[str] = Field(default_factory=lambda: sorted(RIG_FILE_TYPES))
    sources: list[str] | None = None
    licences: list[str] = Field(default_factory=lambda: sorted(PERMISSIVE_LICENCES), description="SPDX ids allowed")
    allow_unlicensed_local: bool = True
    dedupe: bool = Field(True, description="keep one asset per sha256")

    @field_validator("file_types")
    @classmethod
    def _file_types(cls, value: list[str]) -> list[str]:
        types = sorted({t.lower().lstrip(".") for t in value})
        unreadable = [f"{t}: {NO_BLENDER_IMPORTER[t]}" for t in types if t in NO_BLENDER_IMPORTER]
        if unreadable:
            raise ValueError(f"cannot be rendered: {'; '.join(unreadable)}")
        return types

    @field_validator("sources", "licences")
    @classmethod
    def _sorted(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted(set(value))

    def config_hash(self) -> str:
        """A short, stable hash of every field (canonical JSON), recorded with rejections."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The columns of the released Objaverse-XL annotation tables.
ANNOTATION_COLUMNS: tuple[str, ...] = ("fileIdentifier", "source", "license", "fileType", "sha256", "metadata")
# What the prefilter reads, whatever the source: those columns as strings, plus where the bytes already
# are for sources that have them on disk (local, procedural; null for Objaverse-XL).
ANNOTATION_SCHEMA = pa.schema([pa.field(name, pa.string()) for name in (*ANNOTATION_COLUMNS, "local_path")])

# What the prefilter keeps: the annotation with its licence as an SPDX id, the raw licence string
# when it differs, file type and sha256 normalised, and the other places of the same bytes (JSON, in
# preference order; null when there are none). An AssetRef is built from a row only for work to do.
CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("fileIdentifier", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("license", pa.string()),
        pa.field("license_raw", pa.string()),
        pa.field("fileType", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("metadata", pa.string()),
        pa.field("duplicate_copies", pa.string()),
        pa.field("local_path", pa.string()),
    ]
)


class CandidateSummary(BaseModel):
    """What discovery and the prefilter did in one run (small: the rows themselves are in files)."""

    path: str = Field(description="parquet of the accepted candidates (CANDIDATES_SCHEMA), in annotation order")
    scanned: int = Field(0, description="annotation rows decided (a limit stops the scan early)")
    accepted: int = 0
    rejected: int = 0
    rejections_written: int = Field(0, description="new rows in the rejections table (known ones are not rewritten)")
    reasons: dict[str, int] = Field(default_factory=dict, description="'prefilter/reason' -> count")
    first_rejections: list[Rejection] = Field(default_factory=list, description="the first few, for a person to look at")
