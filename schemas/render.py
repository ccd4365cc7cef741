"""What to render and from where: the render specification and the cameras."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from schemas.parts import ColourRules, PartRules, part_rules_hash

PresetName = Literal["draft", "dataset", "hero"]


class Sampling(BaseModel):
    """How Cycles samples an RGB image, beyond the sample count: what a preset fixes.

    ``samples`` is what the preset asks for; the render uses ``RenderSpec.samples`` (``kp20k render
    --preset`` sets it from here unless ``--samples`` is given). Chosen with
    ``benchmarks/render_quality.py``; costs and quality in docs/rendering.md.
    """

    model_config = {"frozen": True}

    samples: int = Field(ge=1, le=4096)
    adaptive_threshold: float = Field(0.0, ge=0.0, description="Cycles noise threshold; 0 turns adaptive sampling off")
    denoising_quality: Literal["FAST", "BALANCED", "HIGH"] = "FAST"
    denoising_prefilter: Literal["NONE", "FAST", "ACCURATE"] = "NONE"
    max_bounces: int = Field(12, ge=0)
    diffuse_bounces: int = Field(4, ge=0)
    glossy_bounces: int = Field(4, ge=0)
    transmission_bounces: int = Field(12, ge=0)
    transparent_max_bounces: int = Field(8, ge=0)


# benchmarks/render_quality.py, CesiumMan, 4 views, PSNR against 512 samples (docs/rendering.md): draft
# is at or above objaverse-xl's settings at 256 and 512 px for 1/5.6 and 1/6 of their CPU time, dataset
# 3 dB (512 px) to 9 dB (256 px) above for 1/3.6 and 1/3.1-3.4. 8 samples with the FAST denoiser fell
# 1.5 dB short at 512 px. Adaptive sampling gained nothing at these counts and fewer bounces lost
# 1.4 dB: both stay off.
PRESETS: dict[str, Sampling] = {
    "draft": Sampling(samples=16, denoising_quality="BALANCED", denoising_prefilter="FAST"),
    "dataset": Sampling(samples=32, denoising_quality="BALANCED", denoising_prefilter="FAST"),
    "hero": Sampling(samples=128, denoising_quality="HIGH", denoising_prefilter="ACCURATE"),
}


# Fields that change how fast a sample is made, never its pixels (Cycles' result does not depend on
# its thread count: tests/pipelines/build/test_worker.py renders both ways and compares).
PIXEL_NEUTRAL: tuple[str, ...] = ("threads",)


class RenderSpec(BaseModel):
    """The render grid and everything else that changes the pixels of a sample.

    Its :meth:`config_hash` keys the ``samples`` table: a changed spec renders new rows.
    """

    n_views: int = Field(4, ge=1, le=64)
    n_frames: int = Field(4, ge=1, le=64)
    resolution: int = Field(64, ge=16, le=2048)
    engine: Literal["CYCLES", "BLENDER_EEVEE"] = "CYCLES"
    device: Literal["CPU", "GPU"] = "CPU"
    samples: int = Field(8, ge=1, le=4096)
    denoise: bool = True
    preset: PresetName = Field(
        "dataset", description="the sampling recipe (adaptive sampling, denoiser, bounces) of schemas.render.PRESETS"
    )
    seed: int = 0
    elevation_deg: float = Field(10.0, ge=-89, le=89)
    elevation_range_deg: tuple[float, float] | None = Field(
        None, description="when set, elevation is drawn per object from this range with a seeded generator"
    )
    camera_distance: float = Field(2.2, gt=0.5, description="in units of the normalised unit cube")
    frame_fill: float | None = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="when set, the camera distance is fitted per clip so that the object, over every view and "
        "sampled frame, spans this fraction of the image (camera_distance is then unused)",
    )
    fov_deg: float = Field(40.0, gt=5, lt=120)
    motion_threshold: float = Field(
        0.01, ge=0.0, description="frame stride grows until consecutive frames differ by this (fraction of bounds)"
    )
    threads: int = Field(1, ge=0, description="Cycles threads per worker; 0 means all cores")
    parts: PartRules = Field(default_factory=PartRules)
    colours: ColourRules = Field(default_factory=ColourRules)

    @model_validator(mode="after")
    def _range(self) -> "RenderSpec":
        if self.elevation_range_deg is not None:
            lo, hi = self.elevation_range_deg
            if not -89 <= lo <= hi <= 89:
                raise ValueError("elevation_range_deg must be (low, high) with -89 <= low <= high <= 89")
        return self

    def canonical_json(self) -> str:
        """The fields that change a pixel, as canonical JSON (what :meth:`config_hash` is taken over and a
        sample records). The fields of :data:`PIXEL_NEUTRAL` are held at their defaults: the hashes of
        tables built before they were left out stay valid."""
        neutral = {name: type(self).model_fields[name].default for name in PIXEL_NEUTRAL}
        return json.dumps(self.model_copy(update=neutral).model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def config_hash(self) -> str:
        """A short, stable hash of everything that changes a pixel (so a changed ``threads`` renders nothing)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def sampling(self) -> Sampling:
        """The preset's recipe with this spec's sample count."""
        return PRESETS[self.preset].model_copy(update={"samples": self.samples})

    def part_rules_hash(self) -> str:
        """The hash of the fields that decide parts and their colours: the part decision's key uses
        this, not :meth:`config_hash`, so every grid of a clip shares one decision."""
        return part_rules_hash(self.parts, self.colours)


class Camera(BaseModel):
    """A pinhole camera in the OpenCV convention.

    ``extrinsics`` is the 4x4 world-to-camera matrix with x right, y down, z forward (into the scene);
    ``intrinsics`` is the 3x3 K in pixels with the origin at the top-left pixel corner. A world point X
    projects to pixel (u, v) = (K @ (E @ [X, 1])[:3])[:2] / z. World space is the normalised object space
    (Blender's Z-up world after normalisation).
    """

    view: int
    azimuth_deg: float
    elevation_deg: float
    distance: float
    fov_deg: float
    width: int
    height: int
    intrinsics: list[list[float]]
    extrinsics: list[list[float]]
    convention: Literal["opencv"] = "opencv"
