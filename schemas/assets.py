"""Assets: where an object comes from, what Blender found in it, and why it was left out."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RejectReason(str, Enum):
    """Reason codes, one per way an asset can fail to become a sample."""

    # prefilter (annotations only)
    unsupported_file_type = "unsupported_file_type"
    no_blender_importer = "no_blender_importer"  # a rig format Blender 5 can no longer read (.dae)
    source_not_requested = "source_not_requested"
    licence_not_allowed = "licence_not_allowed"
    unknown_licence = "unknown_licence"
    duplicate = "duplicate"
    bad_annotation = "bad_annotation"
    # fetch
    download_failed = "download_failed"
    hash_mismatch = "hash_mismatch"
    file_missing = "file_missing"
    resource_outside_folder = "resource_outside_folder"  # a glTF buffer/image outside its folder
    empty_file = "empty_file"
    # probe (Blender)
    import_error = "import_error"
    timeout = "timeout"
    crashed = "crashed"
    # filter (rules over the probe report)
    no_armature = "no_armature"
    multiple_armatures = "multiple_armatures"
    no_skinned_mesh = "no_skinned_mesh"
    too_few_bones = "too_few_bones"
    too_many_bones = "too_many_bones"
    no_animation = "no_animation"
    clip_not_found = "clip_not_found"
    static_animation = "static_animation"
    too_many_faces = "too_many_faces"
    bad_weights = "bad_weights"
    nan_geometry = "nan_geometry"
    # parts / render
    clip_too_short = "clip_too_short"  # the clip spans a single frame: no motion to decide parts from
    too_few_parts = "too_few_parts"
    render_failed = "render_failed"
    # write
    write_failed = "write_failed"  # the worker could not write its samples to the table's storage


class AssetRef(BaseModel):
    """One candidate asset, with the Objaverse-XL annotation fields (snake_case here).

    ``sha256`` is the identity of the content; ``local_path`` is set once the bytes are in the
    content-addressed cache (or, for local and procedural sources, where they already are).
    """

    model_config = ConfigDict(populate_by_name=True)

    file_identifier: str = Field(alias="fileIdentifier")
    source: str
    license: str | None = None
    file_type: str = Field(alias="fileType")
    sha256: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    local_path: str | None = None


class BoneInfo(BaseModel):
    name: str
    parent: str | None = None
    head: list[float] = Field(description="rest-pose head, armature space")
    tail: list[float] = Field(description="rest-pose tail, armature space")


class ClipInfo(BaseModel):
    name: str
    frame_start: int
    frame_end: int
    fps: float
    motion: float = Field(
        0.0,
        description="largest displacement of any bone head over the clip, relative to the rest-pose bounds diagonal",
    )


class ProbeReport(BaseModel):
    """What Blender found in one asset file. ``reason`` is set when the file could not be read."""

    sha256: str
    ok: bool
    reason: RejectReason | None = None
    detail: str = ""
    n_armatures: int = 0
    bones: list[BoneInfo] = Field(default_factory=list)
    n_meshes: int = 0
    n_skinned_meshes: int = 0
    n_rigid_children: int = Field(0, description="meshes parented to a bone without skinning")
    n_vertices: int = 0
    n_faces: int = 0
    clips: list[ClipInfo] = Field(default_factory=list)
    max_weight_sum_error: float = Field(0.0, description="max |sum of raw weights - 1| over weighted vertices")
    n_unweighted_vertices: int = 0
    has_nan: bool = False
    duplicate_bone_names: bool = False
    bounds_min: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    bounds_max: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    seconds: float = 0.0


class Rejection(BaseModel):
    """One row of the ``rejections`` table: why an asset (or one of its clips) was left out."""

    sha256: str
    file_identifier: str
    source: str
    stage: str
    reason: RejectReason
    detail: str = ""
    clip: str = ""
    config_hash: str = ""
    code_version: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    # Added after tables existed (old rows read null): a filter-stage rejection holds the hash of the
    # FilterRules that made it, so a refresh under other rules decides that asset again.
    rules_hash: str | None = None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
