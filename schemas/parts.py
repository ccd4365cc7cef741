"""Kinematic parts: which bone belongs to which part, and the colour each part is drawn with."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from pydantic import BaseModel, Field, model_validator

from schemas.assets import utcnow


class PartRules(BaseModel):
    """How bones become parts (this project's rule; the SP4D paper gives none)."""

    max_parts: int = Field(16, ge=1, le=64)
    min_surface_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="bones dominating less of the surface merge into their parent"
    )
    min_relative_motion: float = Field(
        1e-3,
        ge=0.0,
        description="bones that never move this far relative to their parent over the whole clip (a fraction of "
        "the longest side of the clip's bounds) merge into it",
    )


class ColourRules(BaseModel):
    """Spatial colour encoding: part centroid in the unit cube -> RGB inside [low, high]."""

    low: int = Field(40, ge=0, le=255)
    high: int = Field(215, ge=0, le=255)
    min_distance: float = Field(32.0, gt=0, description="minimum Euclidean distance between two part colours (0-255 units)")
    decode_limit: float = Field(12.0, gt=0, description="pixels farther than this from every palette colour decode as unknown")

    @model_validator(mode="after")
    def _range(self) -> "ColourRules":
        if self.low >= self.high:
            raise ValueError("colour range low must be below high")
        if self.decode_limit * 2 > self.min_distance:
            raise ValueError("decode_limit must be at most half of min_distance so decoding is unambiguous")
        return self


class PartMap(BaseModel):
    """Bones to parts for one asset and clip: a property of the clip, never of the render grid.

    Part ids are 0..n_parts-1 in depth-first order of each part's root bone. Background is id -1
    (alpha 0) in decoded maps. ``palette[i]`` is the RGB colour of part ``i``; ``centroids[i]`` is the
    part's surface centroid at the reference pose (the clip's first frame) in the clip's normalised
    unit cube [0, 1]^3: ``(world + reference_offset) * reference_scale + 0.5``, where the reference
    normalisation centres the clip's bounds over ``motion_frames`` and scales their longest side to 1.
    ``motion_frames`` are the scene frames the decision was measured at (the fixed sampling of
    ``pipelines.build.blender.frames.motion_frames``), and ``bone_motion`` each bone's largest motion
    relative to its parent over them, in those normalised units, in ``bone_to_part`` order.
    """

    bone_to_part: dict[str, int]
    part_names: list[str] = Field(description="part id -> name of the part's root bone")
    palette: list[list[int]] = Field(description="part id -> [r, g, b] in 0..255")
    centroids: list[list[float]] = Field(default_factory=list)
    reference_pose: str = Field("first_frame", description="pose the centroids were taken in")
    reference_scale: float = Field(1.0, gt=0, description="normalisation of the centroids: the clip's bounds")
    reference_offset: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0], min_length=3, max_length=3)
    motion_frames: list[float] = Field(default_factory=list, description="frames motion and bounds were measured at")
    bone_motion: list[float] = Field(default_factory=list, description="per bone: largest motion relative to its parent")

    @property
    def n_parts(self) -> int:
        return len(self.part_names)

    @model_validator(mode="after")
    def _consistent(self) -> "PartMap":
        n = len(self.part_names)
        if len(self.palette) != n:
            raise ValueError(f"palette has {len(self.palette)} colours for {n} parts")
        bad = {b: p for b, p in self.bone_to_part.items() if not 0 <= p < n}
        if bad:
            raise ValueError(f"bones mapped to parts that do not exist: {bad}")
        if self.bone_motion and len(self.bone_motion) != len(self.bone_to_part):
            raise ValueError(f"bone_motion has {len(self.bone_motion)} values for {len(self.bone_to_part)} bones")
        return self


def part_rules_hash(parts: PartRules, colours: ColourRules) -> str:
    """A short, stable hash of everything the rules decide about parts and their colours."""
    blob = json.dumps(
        {"parts": parts.model_dump(mode="json"), "colours": colours.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def part_decision_key(sha256: str, clip: str, rules_hash: str, code_version: str) -> str:
    """The key of a part decision: one per (asset content, clip, part rules, code version). The
    render grid (views, frames, resolution) is deliberately not in it."""
    return hashlib.sha256(f"{sha256}\x00{clip}\x00{rules_hash}\x00{code_version}".encode()).hexdigest()[:32]


class PartDecision(BaseModel):
    """One row of the ``parts`` table: the part map of one asset's clip under one set of part rules
    and one code version, decided once from the whole clip and reused by every render configuration."""

    decision_id: str = Field(description="part_decision_key(sha256, clip, rules_hash, code_version)")
    sha256: str
    clip: str
    rules_hash: str = Field(description="part_rules_hash(parts, colours)")
    code_version: str
    part_map: PartMap
    created_at: datetime = Field(default_factory=utcnow)
