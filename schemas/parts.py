"""Kinematic parts: which bone belongs to which part, and the colour each part is drawn with."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class PartRules(BaseModel):
    """How bones become parts (this project's rule; the SP4D paper gives none)."""

    max_parts: int = Field(16, ge=1, le=64)
    min_surface_fraction: float = Field(
        0.01, ge=0.0, lt=1.0, description="bones dominating less of the surface merge into their parent"
    )
    min_relative_motion: float = Field(
        1e-3, ge=0.0, description="bones that never move relative to their parent (fraction of bounds) merge into it"
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
    """Bones to parts for one asset and clip.

    Part ids are 0..n_parts-1 in depth-first order of each part's root bone. Background is id -1
    (alpha 0) in decoded maps. ``palette[i]`` is the RGB colour of part ``i``; ``centroids[i]`` is the
    part's surface centroid in the normalised unit cube at the reference pose.
    """

    bone_to_part: dict[str, int]
    part_names: list[str] = Field(description="part id -> name of the part's root bone")
    palette: list[list[int]] = Field(description="part id -> [r, g, b] in 0..255")
    centroids: list[list[float]] = Field(default_factory=list)
    reference_pose: str = Field("first_frame", description="pose the centroids were taken in")

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
        return self
