"""A sample's part videos as the lift reads them: decoded part ids per view and frame, and cameras.

Two sources give the same :class:`PartViews`: a folder written by ``kp20k render --out`` (``sample.json``
beside ``parts/`` and ``alpha/``) and a row of the ``samples`` table (its frame packs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.build.colour import decode_part_image
from pipelines.build.framepack import unpack
from schemas.render import Camera
from schemas.samples import Sample


class LiftInputError(ValueError):
    """The input cannot be lifted; the message says what is missing and what to give instead."""


@dataclass
class PartViews:
    """Part ids int16 [V, F, H, W] (-1 background), one OpenCV camera per view (normalised object
    space, Blender's Z up), the part names (id order) and the clip's frame times and rate."""

    part_ids: np.ndarray
    cameras: list[Camera]
    part_names: list[str]
    frame_times: list[float]
    fps: float
    name: str = "sample"
    clip: str = "clip"

    def __post_init__(self) -> None:
        if self.part_ids.ndim != 4:
            raise LiftInputError(f"part ids must be [views, frames, H, W], got shape {self.part_ids.shape}")
        views, frames = self.part_ids.shape[:2]
        if len(self.cameras) != views:
            raise LiftInputError(f"{views} views but {len(self.cameras)} cameras")
        if len(self.frame_times) != frames:
            raise LiftInputError(f"{frames} frames but {len(self.frame_times)} frame times")
        if views < 2:
            raise LiftInputError("carving needs at least 2 views; render with --views 8 or more")
        if not (self.part_ids >= 0).any(axis=(2, 3)).all():
            raise LiftInputError("some view shows no object at all: the masks cannot be carved")

    @property
    def n_parts(self) -> int:
        return len(self.part_names)


def from_folder(folder: str | Path) -> PartViews:
    """Read a ``kp20k render --out`` folder."""
    folder = Path(folder)
    record_path = folder / "sample.json"
    if not record_path.is_file():
        raise LiftInputError(f"{folder} has no sample.json: give a folder written by `kp20k render --out`")
    record = json.loads(record_path.read_text())
    grid = record["grid"]
    palette = np.asarray(record["part_map"]["palette"], np.uint8)
    ids = np.full((grid["views"], grid["frames"], grid["height"], grid["width"]), -1, np.int16)
    for v in range(grid["views"]):
        for f in range(grid["frames"]):
            name = f"v{v:02d}_f{f:02d}.png"
            parts, alpha = folder / "parts" / name, folder / "alpha" / name
            if not parts.is_file() or not alpha.is_file():
                raise LiftInputError(f"{folder}: {parts.name} is missing from parts/ or alpha/; render the folder again")
            rgb = np.asarray(Image.open(parts).convert("RGB"))
            ids[v, f] = decode_part_image(rgb, palette, alpha=np.asarray(Image.open(alpha)))
    return PartViews(
        part_ids=ids,
        cameras=[Camera.model_validate(c) for c in record["cameras"]],
        part_names=list(record["part_map"]["part_names"]),
        frame_times=[float(t) for t in record["frame_times"]],
        fps=float(record["fps"]),
        name=folder.name,
        clip=str(record["clip"]),
    )


def from_sample(sample: Sample) -> PartViews:
    """Read a row of the ``samples`` table."""
    palette = np.asarray(sample.part_map.palette, np.uint8)
    ids = decode_part_image(unpack(sample.parts), palette, alpha=unpack(sample.alpha))
    return PartViews(
        part_ids=ids,
        cameras=list(sample.cameras),
        part_names=list(sample.part_map.part_names),
        frame_times=list(sample.frame_times),
        fps=float(sample.fps),
        name=sample.sample_id,
        clip=sample.clip,
    )
