"""4D fitting: the fit's settings and the record written beside a fitted asset."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from schemas.parts import PartMap
from schemas.render import Camera

ASSET_FORMAT = "kp20k-fit4d/1"


class FitConfig(BaseModel):
    """How a sample's views and frames become a dynamic 3D asset (stage 1 of SV4D 2.0's recipe).

    ``train_views`` / ``train_frames`` pick the grid cells the fit sees (all when None); the others
    are held out for scoring.
    """

    n_gaussians: int = Field(1500, ge=16, le=200_000, description="primitives kept from the visual hull")
    steps: int = Field(300, ge=1, le=100_000, description="optimiser steps in all, static warm-up included")
    static_fraction: float = Field(
        0.25, ge=0.0, le=1.0, description="share of the steps fitted on the reference frame alone (the canonical shape)"
    )
    progressive: bool = Field(True, description="add the other frames one at a time, nearest first, instead of all at once")
    batch: int = Field(4, ge=1, le=64, description="images (view, frame) per step")
    lr_means: float = Field(3e-3, gt=0)
    lr_appearance: float = Field(3e-2, gt=0, description="colours, opacities, scales, rotations, part logits")
    lr_motion: float = Field(3e-2, gt=0, description="per-part rigid motions and skinning weights")
    alpha_weight: float = Field(1.0, ge=0, description="weight of the alpha (silhouette) L1 loss")
    part_weight: float = Field(0.1, ge=0, description="weight of the part cross-entropy on foreground pixels")
    centroid_weight: float = Field(
        1.0, ge=0, description="weight of the distance (image widths) between rendered and true part centroids"
    )
    rigidity_weight: float = Field(
        0.1, ge=0, description="pull of each primitive's skinning weights towards its own part (kinematic prior)"
    )
    visibility_falloff: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="view confidence: a view at azimuth d from the input view weighs 1 - falloff * (1 - cos d) / 2 "
        "(0 for ground truth; about 0.5 for generated views, less reliable away from the input)",
    )
    train_views: list[int] | None = None
    train_frames: list[int] | None = None
    reference_frame: int | None = Field(None, description="grid frame of the canonical shape; default: the first trained frame")
    renderer: Literal["auto", "torch", "gsplat"] = Field(
        "auto", description="auto: gsplat when it imports and the device is CUDA, else the pure PyTorch splatter"
    )
    device: str = "cpu"
    threads: int = Field(
        1, ge=1, le=256, description="PyTorch threads during the fit: the work is many small operations, which "
        "one thread runs fastest at 32-64 px (measured: docs/fit4d.md)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _views(self) -> "FitConfig":
        for name in ("train_views", "train_frames"):
            chosen = getattr(self, name)
            if chosen is not None and (not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0):
                raise ValueError(f"{name} must be distinct grid indices (>= 0), at least one, got {chosen}")
        return self


class FitRecord(BaseModel):
    """``asset.json``: everything needed to read ``gaussians.safetensors`` and render the asset.

    Geometry lives in the sample's normalised object space; ``cameras`` use the project's OpenCV
    convention (:class:`schemas.render.Camera`). The asset renders at any time in ``time_range``
    (scene frame numbers): the part motions are interpolated linearly between ``knot_times``.
    """

    format: str = ASSET_FORMAT
    source: str = Field(description="the sample folder, or lance URI#version/sample_id")
    sample_id: str
    clip: str
    fps: float
    knot_times: list[float] = Field(description="scene frames the motion is stored at (the trained frames, in order)")
    time_range: tuple[float, float]
    frame_times: list[float] = Field(description="every frame time of the source grid")
    reference_frame_time: float
    cameras: list[Camera]
    train_views: list[int]
    train_frames: list[int]
    part_map: PartMap
    background: list[float] = Field(description="RGB in 0..1 the colour renders are composited over")
    n_gaussians: int
    config: FitConfig
    renderer: str
    fit_seconds: float
    final_losses: dict[str, float]
    code_version: str
    tensors: dict[str, str] = Field(
        default_factory=lambda: dict(TENSOR_DOC), description="what each tensor in gaussians.safetensors holds"
    )


TENSOR_DOC = {
    "means": "[N, 3] canonical centres at the reference frame (normalised object space)",
    "log_scales": "[N, 3] log standard deviations along the primitive's axes",
    "quats": "[N, 4] rotation (w, x, y, z), not necessarily unit: normalise before use",
    "opacity_logits": "[N] opacity = sigmoid",
    "colour_logits": "[N, 3] RGB = sigmoid",
    "part_logits": "[N, P] part probabilities = softmax",
    "skin_logits": "[N, P] weights of the P part motions = softmax",
    "pivots": "[P, 3] the centre each part's rotation turns about",
    "rotations": "[P, T, 3] axis-angle of each part at each knot time",
    "translations": "[P, T, 3] translation of each part at each knot time",
}
