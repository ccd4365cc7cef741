"""Filter thresholds: explicit, configurable rules over a probe report."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field, model_validator


class FilterRules(BaseModel):
    """Defaults follow the peers the spec names: one armature (UniRig), 2 to 100 bones
    (MagicArticulate), skin rows that sum to 1 (MagicArticulate), motion above a threshold
    (SV4D's ObjaverseDy curation)."""

    min_bones: int = Field(2, ge=1)
    max_bones: int = Field(100, ge=1)
    max_faces: int = Field(500_000, ge=1)
    max_armatures: int = Field(1, ge=1)
    min_motion: float = Field(0.01, ge=0.0, description="clip motion below this (fraction of bounds) is static")
    min_frames: int = Field(2, ge=1, description="clips with fewer frames count as no animation")
    max_weight_sum_error: float = Field(
        1e-3, ge=0.0, description="raw per-vertex weight sums further than this from 1 are bad weights"
    )
    allow_rigid_only: bool = Field(True, description="accept armatures that drive meshes parented to bones, without skin")

    @model_validator(mode="after")
    def _order(self) -> "FilterRules":
        if self.min_bones > self.max_bones:
            raise ValueError(f"min_bones ({self.min_bones}) is above max_bones ({self.max_bones})")
        return self

    def rules_hash(self) -> str:
        """A short, stable hash of every rule (canonical JSON): filter rejections record it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
