"""What a fit reads: a sample's views and frames with exact cameras, from a render folder or a Lance row.

Both sources give the same :class:`FitTarget`: RGB in [0, 1] composited over white, alpha in [0, 1],
part ids (-1 on background, decoded with the sample's palette) and the cameras in the project's OpenCV
convention. A folder is what ``kp20k render --out`` writes (rgb/, parts/, alpha/, sample.json).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import ValidationError

from pipelines.build.colour import decode_part_image
from pipelines.build.framepack import unpack
from schemas.parts import PartMap
from schemas.render import Camera, RenderSpec
from schemas.samples import Sample


class TargetError(ValueError):
    """A sample a fit cannot read: the message says what is missing or wrong."""


@dataclass
class FitTarget:
    source: str
    sample_id: str
    clip: str
    fps: float
    frame_times: list[float]
    cameras: list[Camera]
    part_map: PartMap
    rgb: np.ndarray  # float32 [V, F, H, W, 3] in [0, 1]
    alpha: np.ndarray  # float32 [V, F, H, W] in [0, 1]
    part_ids: np.ndarray  # int64 [V, F, H, W], -1 background or undecodable

    @property
    def n_views(self) -> int:
        return self.rgb.shape[0]

    @property
    def n_frames(self) -> int:
        return self.rgb.shape[1]

    @property
    def palette(self) -> np.ndarray:
        return np.asarray(self.part_map.palette, dtype=np.uint8).reshape(-1, 3)

    @property
    def parts_rgb(self) -> np.ndarray:
        """The part maps as stored: palette colours, black background, uint8 [V, F, H, W, 3]."""
        out = np.zeros((*self.part_ids.shape, 3), np.uint8)
        out[self.part_ids >= 0] = self.palette[self.part_ids[self.part_ids >= 0]]
        return out


def load_folder(folder: Path | str) -> FitTarget:
    """A ``kp20k render --out`` folder (or a generated sample written the same way)."""
    folder = Path(folder)
    record_path = folder / "sample.json"
    if not record_path.is_file():
        raise TargetError(f"{folder} has no sample.json: give a folder written by `kp20k render --out` "
                          "(rgb/, parts/, alpha/, sample.json)")
    try:
        record = json.loads(record_path.read_text())
        cameras = [Camera.model_validate(c) for c in record["cameras"]]
        part_map = PartMap.model_validate(record["part_map"])
        frame_times = [float(t) for t in record["frame_times"]]
        decode_limit = RenderSpec.model_validate(record.get("render_config", {})).colours.decode_limit
    except (json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
        raise TargetError(f"{record_path} is not a valid sample record: {exc}") from exc
    n_views, n_frames = len(cameras), len(frame_times)
    grids = {kind: _read_pngs(folder / kind, n_views, n_frames) for kind in ("rgb", "parts", "alpha")}
    return from_arrays(str(folder), record.get("sha256", folder.name), record.get("clip", ""), float(record.get("fps", 24.0)),
                   frame_times, cameras, part_map, grids["rgb"], grids["parts"], grids["alpha"], decode_limit)


def from_sample(sample: Sample, source: str) -> FitTarget:
    """A row of the ``samples`` table (blobs read)."""
    decode_limit = RenderSpec.model_validate_json(sample.render_config).colours.decode_limit
    return from_arrays(source, sample.sample_id, sample.clip, sample.fps, list(sample.frame_times), list(sample.cameras),
                   sample.part_map, unpack(sample.rgb), unpack(sample.parts), unpack(sample.alpha), decode_limit)


def _read_pngs(folder: Path, n_views: int, n_frames: int) -> np.ndarray:
    missing = [f"v{v:02d}_f{f:02d}.png" for v in range(n_views) for f in range(n_frames)
               if not (folder / f"v{v:02d}_f{f:02d}.png").is_file()]
    if missing:
        raise TargetError(f"{folder} lacks {len(missing)} of the {n_views * n_frames} images sample.json names "
                          f"(first: {missing[0]}); render the sample again")
    return np.stack([np.stack([np.asarray(Image.open(folder / f"v{v:02d}_f{f:02d}.png")) for f in range(n_frames)])
                     for v in range(n_views)])


def from_arrays(source: str, sample_id: str, clip: str, fps: float, frame_times: list[float], cameras: list[Camera],
                part_map: PartMap, rgb: np.ndarray, parts: np.ndarray, alpha: np.ndarray, decode_limit: float) -> FitTarget:
    """A target from uint8 grids [V, F, H, W(, C)] as a render writes them (parts decoded here)."""
    if rgb.ndim != 5 or rgb.shape[-1] < 3 or parts.shape[:4] != rgb.shape[:4] or alpha.shape[:4] != rgb.shape[:4]:
        raise TargetError(f"{source}: RGB, part and alpha grids differ in shape: {rgb.shape}, {parts.shape}, {alpha.shape}")
    if rgb.shape[:2] != (len(cameras), len(frame_times)):
        raise TargetError(f"{source}: the grid is {rgb.shape[:2]} (views, frames) but the record has "
                          f"{len(cameras)} cameras and {len(frame_times)} frame times")
    if alpha.ndim == 5:
        alpha = alpha[..., 0]
    part_ids = decode_part_image(parts[..., :3], np.asarray(part_map.palette, np.uint8).reshape(-1, 3), limit=decode_limit)
    return FitTarget(
        source=source, sample_id=sample_id, clip=clip, fps=fps, frame_times=frame_times, cameras=cameras,
        part_map=part_map, rgb=rgb[..., :3].astype(np.float32) / 255.0, alpha=alpha.astype(np.float32) / 255.0,
        part_ids=part_ids.astype(np.int64),
    )


def from_grid(grid, spec: RenderSpec, source: str) -> FitTarget:
    """A target straight from a Blender render (``pipelines.build.blender.render.RenderedGrid``)."""
    return from_arrays(source, source, grid.clip, grid.fps, list(grid.frame_times), list(grid.cameras), grid.part_map,
                       grid.rgb, grid.parts, grid.alpha, spec.colours.decode_limit)
