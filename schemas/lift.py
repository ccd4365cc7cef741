"""Records of the lift stage (part videos -> rigged, animated asset): the rig summary, its metrics
against the true rig, and a row of the ``rigs`` table."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from schemas.assets import utcnow


class RigSummary(BaseModel):
    """What the lift made of one sample."""

    n_vertices: int
    n_faces: int
    n_parts: int = Field(description="parts in the sample's palette")
    n_bones: int
    n_frames: int
    bone_names: list[str] = Field(description="per bone, the names of the parts it moves joined with '+'")
    bone_parents: list[int] = Field(description="per bone, its parent bone (-1: the root)")
    unseen_parts: list[str] = Field(default_factory=list, description="parts no vertex of the carved surface carries (no view showed them on it): left without a bone")
    merged_parts: list[list[str]] = Field(default_factory=list, description="parts merged because they moved rigidly together")
    mean_confidence: float = Field(description="mean share of a vertex's votes that went to its part (0 unseen)")
    seconds: float = 0.0


class RigMetrics(BaseModel):
    """The lifted rig against the true rig (``pipelines.lift.metrics``; ``docs/lifting.md``)."""

    miou: float
    ari: float
    cd_j2j: float
    cd_j2b: float
    cd_b2b: float
    skin_precision: float
    skin_recall: float
    skin_l1: float
    replay_error: float


class RigRow(BaseModel):
    """One row of the ``rigs`` table: the .glb of one lifted sample and how it was made."""

    rig_id: str = Field(description="rig_key(source, sample_id, code_version)")
    sample_id: str
    source: str = Field(description="samples.lance@<version> or the folder the sample came from")
    clip: str
    glb: bytes = Field(json_schema_extra={"blob": True})
    summary: RigSummary
    metrics: RigMetrics | None = Field(None, description="only when the true rig was at hand")
    code_version: str
    created_at: datetime = Field(default_factory=utcnow)
