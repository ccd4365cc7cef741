"""Frame packs: lossless, selective, deterministic, and clear about bad input."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from pipelines.build.framepack import grid_shape, member_name, pack, unpack


def noise(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(3, 2, 16, 16, 3), (2, 3, 8, 12), (1, 1, 5, 7, 4)])
def test_round_trip_is_bit_exact(shape: tuple[int, ...]) -> None:
    grid = noise(shape)
    assert np.array_equal(unpack(pack(grid)), grid)


def test_unpack_returns_the_asked_cells_in_the_asked_order() -> None:
    grid = noise((4, 3, 8, 8, 3))
    blob = pack(grid)
    assert np.array_equal(unpack(blob, views=[2, 0], frames=[1]), grid[[2, 0]][:, [1]])
    assert np.array_equal(unpack(blob, views=[3]), grid[[3]])
    assert np.array_equal(unpack(blob, frames=[2, 0]), grid[:, [2, 0]])
    assert grid_shape(blob) == (4, 3)


def test_pack_is_deterministic_and_stored_uncompressed() -> None:
    grid = noise((2, 2, 8, 8))
    assert pack(grid) == pack(grid.copy())
    with zipfile.ZipFile(io.BytesIO(pack(grid))) as zf:
        assert [i.compress_type for i in zf.infolist()] == [zipfile.ZIP_STORED] * 4
        assert zf.namelist() == [member_name(v, f) for v in range(2) for f in range(2)]


class CountingFile(io.BytesIO):
    """A seekable file that counts the bytes handed out."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_reading_one_frame_from_a_file_reads_a_fraction_of_the_pack() -> None:
    blob = pack(noise((4, 4, 32, 32, 3)))  # 16 incompressible frames of ~3 KiB each
    source = CountingFile(blob)
    cell = unpack(source, views=[1], frames=[2])
    assert cell.shape == (1, 1, 32, 32, 3)
    assert source.bytes_read < len(blob) / 4


def test_bad_input_gives_clear_errors() -> None:
    blob = pack(noise((2, 2, 4, 4)))
    with pytest.raises(KeyError, match="no view 5 frame 0"):
        unpack(blob, views=[5], frames=[0])
    with pytest.raises(ValueError, match="uint8"):
        pack(np.zeros((1, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="views, frames"):
        pack(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="1 to 100 views and frames"):
        pack(np.zeros((101, 1, 2, 2), dtype=np.uint8))
    with pytest.raises(zipfile.BadZipFile):
        unpack(b"not a zip")
