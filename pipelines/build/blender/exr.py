"""A reader for the one OpenEXR layout the renderer writes: single part, scanlines, no compression.

The bpy wheel ships no OpenImageIO module and ``bpy.data.images`` cannot pick a pass out of a
multilayer file, so the render's passes (Combined RGBA, Material Index) are read here with numpy. Any
other layout is refused rather than misread.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_MAGIC = 20000630
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_TILED, _MULTIPART, _DEEP = 0x200, 0x1000, 0x800


class ExrFormatError(ValueError):
    """The file is not an uncompressed single-part scanline OpenEXR image."""


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Channel name -> array [H, W] (top row first), in the file's pixel type."""
    data = Path(path).read_bytes()
    magic, version = struct.unpack_from("<ii", data, 0)
    if magic != _MAGIC:
        raise ExrFormatError(f"{path}: not an OpenEXR file")
    if version & (_TILED | _MULTIPART | _DEEP):
        raise ExrFormatError(f"{path}: tiled, multi-part and deep files are not supported")
    header, pos = _read_header(data, 8)
    if header["compression"] != 0:
        raise ExrFormatError(f"{path}: compression {header['compression']} (only NONE is supported)")
    x0, y0, x1, y1 = header["dataWindow"]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    channels = header["channels"]
    offsets = np.frombuffer(data, dtype="<u8", count=height, offset=pos)
    line_dtype = np.dtype([(name, dt, (width,)) for name, dt in channels])
    out = {name: np.empty((height, width), dt) for name, dt in channels}
    for offset in offsets:
        y, size = struct.unpack_from("<ii", data, int(offset))
        if size != line_dtype.itemsize:
            raise ExrFormatError(f"{path}: scanline {y} holds {size} bytes, expected {line_dtype.itemsize}")
        line = np.frombuffer(data, dtype=line_dtype, count=1, offset=int(offset) + 8)[0]
        for name, _ in channels:
            out[name][y - y0] = line[name]
    return out


def _read_header(data: bytes, pos: int) -> tuple[dict, int]:
    header: dict = {}
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        pos += 4
        value = data[pos : pos + size]
        pos += size
        if name == "channels":
            header[name] = _channels(value)
        elif name == "compression":
            header[name] = value[0]
        elif name == "dataWindow":
            header[name] = struct.unpack("<iiii", value)
    missing = {"channels", "compression", "dataWindow"} - header.keys()
    if missing:
        raise ExrFormatError(f"header lacks {sorted(missing)}")
    return header, pos + 1


def _channels(value: bytes) -> list[tuple[str, np.dtype]]:
    channels, pos = [], 0
    while value[pos] != 0:
        name, pos = _cstring(value, pos)
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", value, pos)
        pos += 16
        if (x_sampling, y_sampling) != (1, 1):
            raise ExrFormatError(f"channel {name} is subsampled")
        channels.append((name, _PIXEL_DTYPES[pixel_type]))
    return channels  # the file stores them sorted by name, which is also their order in a scanline


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode("utf-8"), end + 1
