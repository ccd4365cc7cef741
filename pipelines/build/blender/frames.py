"""Which frames of a clip to render: the stride grows until consecutive frames differ enough."""

from __future__ import annotations

import math
from typing import Callable


def sample_frames(
    start: float, end: float, n_frames: int, motion: Callable[[float, float], float], threshold: float
) -> list[float]:
    """``n_frames`` frames from ``start`` with a whole-frame stride (SV4D's curation practice).

    The stride starts at one frame and grows until every pair of consecutive frames differs by at
    least ``threshold`` (``motion(a, b)``, a fraction of the object's size); if no stride reaches it,
    the frames spread over the whole clip. A clip shorter than ``n_frames`` whole frames is sampled
    evenly at fractional frames.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if n_frames == 1:
        return [start]
    span = end - start
    widest = math.floor(span / (n_frames - 1))
    if widest < 1:
        return [start + span * i / (n_frames - 1) for i in range(n_frames)]
    for stride in range(1, widest + 1):
        frames = [start + stride * i for i in range(n_frames)]
        if all(motion(a, b) >= threshold for a, b in zip(frames, frames[1:])):
            return frames
    return [start + widest * i for i in range(n_frames)]
