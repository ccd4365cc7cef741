"""One row of the ``samples`` table: an asset's clip rendered on the view x frame grid."""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import BaseModel, Field

from schemas.assets import utcnow
from schemas.parts import PartMap
from schemas.render import Camera


def sample_key(sha256: str, clip: str, config_hash: str) -> str:
    """The primary key of a sample: one per (asset content, clip, render configuration)."""
    return hashlib.sha256(f"{sha256}\x00{clip}\x00{config_hash}".encode()).hexdigest()[:32]


class Sample(BaseModel):
    """A rendered sample.

    Image payloads are *frame packs*: an uncompressed ZIP (``ZIP_STORED``) of PNG files named
    ``v{view:02d}_f{frame:02d}.png``, one per grid cell. Any zip reader opens them, a reader fetches
    only the members it needs, and PNG keeps the part maps lossless. ``rgb`` holds RGBA-free RGB,
    ``parts`` the colour-encoded part maps (exact palette colours, black background), ``alpha`` the
    8-bit coverage mask.
    """

    sample_id: str = Field(description="sample_key(sha256, clip, config_hash)")
    sha256: str
    file_identifier: str
    source: str
    license: str | None = None
    clip: str
    fps: float
    frame_times: list[float] = Field(description="scene frame numbers that were rendered, in order")
    n_views: int
    n_frames: int
    height: int
    width: int
    cameras: list[Camera]
    part_map: PartMap
    part_decision_id: str = Field(
        description="key of the clip's part decision in the parts table: part_decision_key(sha256, clip, "
        "rules hash of render_config's parts and colours, code_version)"
    )
    normalisation_scale: float
    normalisation_offset: list[float] = Field(description="world = (original + offset) * scale")
    rgb: bytes = Field(json_schema_extra={"blob": True})
    parts: bytes = Field(json_schema_extra={"blob": True})
    alpha: bytes = Field(json_schema_extra={"blob": True})
    render_config: str = Field(description="the RenderSpec as canonical JSON")
    config_hash: str
    code_version: str
    probe_seconds: float = 0.0
    render_seconds: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
