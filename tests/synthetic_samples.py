"""Synthetic samples without Blender: real frame packs of a known part layout, for tests and benchmarks.

Each grid cell shows a disc cut into ``n_parts`` pie sectors. The sectors turn a little from cell
to cell (so a wrong view or frame index shows) and the disc's size depends on the view. Part maps
are encoded with the project's palette rules (:mod:`pipelines.build.colour`), so decoding them must give
back :func:`part_grid` exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np

from pipelines.build.blender import cameras as blender_cameras
from pipelines.build.colour import BACKGROUND, encode_palette, encode_part_image
from pipelines.build.framepack import pack
from schemas.parts import PartMap, part_decision_key
from schemas.render import Camera, RenderSpec
from schemas.samples import Sample, sample_key


def part_grid(n_views: int, n_frames: int, size: int, n_parts: int, seed: int = 0) -> np.ndarray:
    """Part ids int16 [V, F, size, size], -1 outside the disc."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2
    angle = (np.arctan2(yy - centre, xx - centre) + math.pi) / (2 * math.pi)  # 0..1
    radius = np.hypot(yy - centre, xx - centre)
    grid = np.full((n_views, n_frames, size, size), BACKGROUND, dtype=np.int16)
    for v in range(n_views):
        inside = radius < size * (0.25 + 0.05 * (v % 4))
        for f in range(n_frames):
            phase = (v * n_frames + f) / (n_views * n_frames) + 0.1 * seed
            sector = np.floor((angle + phase / n_parts) * n_parts).astype(np.int64) % n_parts
            grid[v, f][inside] = sector[inside]
    return grid


def palette_for(n_parts: int, spec: RenderSpec) -> np.ndarray:
    """Palette uint8 [P, 3] from sector centroids around the middle of the unit cube."""
    angles = (np.arange(n_parts) + 0.5) / n_parts * 2 * math.pi
    centroids = np.stack([0.5 + 0.3 * np.cos(angles), 0.5 + 0.3 * np.sin(angles), np.full(n_parts, 0.5)], axis=1)
    return encode_palette(centroids, spec.colours)


def orbit_cameras(spec: RenderSpec) -> list[Camera]:
    """The renderer's orbit (view 0 at azimuth 0, OpenCV convention) at the spec's fixed distance."""
    return blender_cameras.orbit_cameras(
        spec.n_views, spec.elevation_deg, spec.camera_distance, spec.fov_deg, spec.resolution
    )


def synthetic_sample(
    sha256: str,
    clip: str = "clip",
    spec: RenderSpec | None = None,
    n_parts: int = 3,
    seed: int = 0,
    code_version: str = "test",
) -> Sample:
    """A complete, valid ``Sample`` whose part maps decode to ``part_grid(..., seed)``."""
    spec = spec or RenderSpec(n_views=4, n_frames=4, resolution=32)
    ids = part_grid(spec.n_views, spec.n_frames, spec.resolution, n_parts, seed)
    palette = palette_for(n_parts, spec)
    parts = encode_part_image(ids, palette)
    inside = ids >= 0
    alpha = np.where(inside, 255, 0).astype(np.uint8)
    # RGB: the part colour darkened towards the rim, over a grey that differs per cell.
    shade = np.linspace(1.0, 0.6, spec.resolution)[None, None, None, :, None]
    background = np.zeros_like(parts)
    background[...] = (np.arange(spec.n_views * spec.n_frames) * 7 % 256).reshape(spec.n_views, spec.n_frames, 1, 1, 1)
    rgb = np.where(inside[..., None], (parts * shade).astype(np.uint8), background)
    config_hash = spec.config_hash()
    return Sample(
        sample_id=sample_key(sha256, clip, config_hash),
        sha256=sha256,
        file_identifier=f"synthetic://{sha256}",
        source="synthetic",
        license="CC0-1.0",
        clip=clip,
        fps=24.0,
        frame_times=[float(f) for f in range(1, spec.n_frames + 1)],
        n_views=spec.n_views,
        n_frames=spec.n_frames,
        height=spec.resolution,
        width=spec.resolution,
        cameras=orbit_cameras(spec),
        part_map=PartMap(
            bone_to_part={f"bone{i}": i for i in range(n_parts)},
            part_names=[f"bone{i}" for i in range(n_parts)],
            palette=palette.tolist(),
        ),
        part_decision_id=part_decision_key(sha256, clip, spec.part_rules_hash(), code_version),
        normalisation_scale=1.0,
        normalisation_offset=[0.0, 0.0, 0.0],
        rgb=pack(rgb),
        parts=pack(parts),
        alpha=pack(alpha),
        render_config=json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":")),
        config_hash=config_hash,
        code_version=code_version,
    )
