"""Hex digests held in Arrow string arrays as fixed-width numpy values, with no Python object per row.

Keys and content hashes are hex strings; a set of millions of them as Python ``str`` costs ~80 bytes
each, as packed bytes 8 or 16. The decoding reads the Arrow buffers directly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NIBBLE = np.zeros(256, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def hex_bytes(strings: pa.Array, n_bytes: int) -> np.ndarray:
    """The first ``2 * n_bytes`` hex digits of every string as an ``(n, n_bytes)`` uint8 array.

    Every string must hold at least that many hex digits (a ``ValueError`` says so otherwise)."""
    head = pc.utf8_slice_codeunits(strings, 0, 2 * n_bytes)
    if isinstance(head, pa.ChunkedArray):
        head = head.combine_chunks()
    n = len(head)
    if n == 0:
        return np.zeros((0, n_bytes), dtype=np.uint8)
    if head.null_count or pc.min(pc.utf8_length(head)).as_py() < 2 * n_bytes:
        raise ValueError(f"hex keys must hold at least {2 * n_bytes} digits and no nulls")
    offsets = np.frombuffer(head.buffers()[1], np.int32)[head.offset : head.offset + n + 1]
    digits = _NIBBLE[np.frombuffer(head.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]].reshape(n, n_bytes, 2)
    return (digits[:, :, 0] << 4) | digits[:, :, 1]


def hex_prefix64(strings: pa.Array) -> np.ndarray:
    """The first 8 bytes of each hex digest as one uint64 (big-endian: sorts like the string)."""
    return np.ascontiguousarray(hex_bytes(strings, 8)).view(">u8").ravel().astype(np.uint64)


def hex_key16(strings: pa.Array) -> np.ndarray:
    """The first 16 bytes of each hex digest as a fixed 16-byte numpy value (``S16``: sortable, ``np.isin``)."""
    return np.ascontiguousarray(hex_bytes(strings, 16)).view("S16").ravel()


def isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for an already sorted set: a binary search, no copy of the set."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values
