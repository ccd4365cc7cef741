"""The EXR reader against files Blender itself writes."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest

from pipelines.build.blender.exr import ExrFormatError, read_exr
from pipelines.build.blender.session import BlenderSession


def _save(session: BlenderSession, pixels: np.ndarray, path: Path, codec: str) -> None:
    """Write an RGBA float image [H, W, 4] (top row first) with the scene's EXR settings."""
    height, width, _ = pixels.shape
    session.reset()
    image = bpy.data.images.new("probe", width, height, alpha=True, float_buffer=True)
    image.pixels.foreach_set(pixels[::-1].astype(np.float32).ravel())  # Blender stores bottom row first
    settings = bpy.context.scene.render.image_settings
    settings.media_type = "IMAGE"
    settings.file_format = "OPEN_EXR"
    settings.color_depth = "32"
    settings.exr_codec = codec
    with session.capture():
        image.save_render(str(path), scene=bpy.context.scene)


def test_reads_exact_float_channels_top_row_first(session: BlenderSession, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 4, size=(5, 7, 4)).astype(np.float32)
    pixels[0, 0] = [1.0, 2.0, 3.0, 0.5]  # top-left corner, recognisable
    path = tmp_path / "plain.exr"
    _save(session, pixels, path, "NONE")
    channels = read_exr(path)
    assert sorted(channels) == ["A", "B", "G", "R"]
    for i, name in enumerate("RGBA"):
        assert channels[name].shape == (5, 7)
        np.testing.assert_array_equal(channels[name], pixels[..., i])


def test_refuses_compressed_files(session: BlenderSession, tmp_path: Path) -> None:
    path = tmp_path / "zip.exr"
    _save(session, np.ones((4, 4, 4), np.float32), path, "ZIP")
    with pytest.raises(ExrFormatError, match="compression"):
        read_exr(path)


def test_refuses_non_exr(tmp_path: Path) -> None:
    path = tmp_path / "not.exr"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ExrFormatError, match="not an OpenEXR"):
        read_exr(path)
