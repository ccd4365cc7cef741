"""Frame packs: a grid of images in one uncompressed ZIP of PNGs.

A sample's RGB, part and alpha grids are each stored as one blob: ``ZIP_STORED`` (the PNGs are
already compressed) with members ``v{view:02d}_f{frame:02d}.png``. Any zip tool opens it, a reader
reads only the members it needs (the central directory sits at the end), and PNG is lossless, which
the part maps require.
"""

from __future__ import annotations

import io
import zipfile
from typing import BinaryIO, Sequence

import numpy as np
from PIL import Image


MAX_GRID = 100  # member names carry two-digit view and frame numbers


def member_name(view: int, frame: int) -> str:
    return f"v{view:02d}_f{frame:02d}.png"


def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def pack(grid: np.ndarray) -> bytes:
    """Pack a uint8 array of shape (views, frames, H, W) or (views, frames, H, W, C)."""
    if grid.ndim not in (4, 5):
        raise ValueError(f"expected (views, frames, H, W[, C]), got shape {grid.shape}")
    if not (0 < grid.shape[0] <= MAX_GRID and 0 < grid.shape[1] <= MAX_GRID):
        raise ValueError(f"a pack holds 1 to {MAX_GRID} views and frames (two-digit names), got {grid.shape[:2]}")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for v in range(grid.shape[0]):
            for f in range(grid.shape[1]):
                info = zipfile.ZipInfo(member_name(v, f), date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, encode_png(np.ascontiguousarray(grid[v, f])))
    return buf.getvalue()


def grid_shape(blob: bytes | BinaryIO) -> tuple[int, int]:
    """(views, frames) of a pack, from its member names alone."""
    with zipfile.ZipFile(_as_file(blob)) as zf:
        names = zf.namelist()
    views = 1 + max(int(n[1:3]) for n in names)
    frames = 1 + max(int(n[5:7]) for n in names)
    return views, frames


def unpack(
    blob: bytes | BinaryIO,
    views: Sequence[int] | None = None,
    frames: Sequence[int] | None = None,
) -> np.ndarray:
    """Decode the chosen views and frames (all by default) into (len(views), len(frames), H, W[, C])."""
    with zipfile.ZipFile(_as_file(blob)) as zf:
        names = set(zf.namelist())
        if views is None or frames is None:
            n_views = 1 + max(int(n[1:3]) for n in names)
            n_frames = 1 + max(int(n[5:7]) for n in names)
            views = range(n_views) if views is None else views
            frames = range(n_frames) if frames is None else frames
        rows = []
        for v in views:
            row = []
            for f in frames:
                name = member_name(v, f)
                if name not in names:
                    raise KeyError(f"frame pack has no view {v} frame {f}")
                row.append(decode_png(zf.read(name)))
            rows.append(np.stack(row))
    return np.stack(rows)


def _as_file(blob: bytes | BinaryIO) -> BinaryIO:
    return io.BytesIO(blob) if isinstance(blob, (bytes, bytearray, memoryview)) else blob
