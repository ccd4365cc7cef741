"""Which frames of a clip to look at.

Two samplings, on purpose: :func:`motion_frames` is the fixed, dense sampling at which a clip's parts
and palette are decided (a property of the clip alone); :func:`sample_frames` picks the few frames a
render grid shows (a property of the render configuration).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

# A clip longer than this many sampled frames (about 10 s at 24 fps, every frame) is measured at this
# many frames spread evenly over its range instead: bounds the cost of deciding parts on long clips.
MAX_MOTION_FRAMES = 256
_SAME_FRAME = 1e-4  # key times within this of a sampled frame add nothing


def motion_frames(start: float, end: float, keys: Iterable[float] = ()) -> list[float]:
    """The fixed sampling of a clip at which its parts are decided, independent of any render grid.

    Every whole frame from ``start`` to ``end``, the two ends themselves (which may be fractional), and
    every key time inside the range, sorted; when that is more than :data:`MAX_MOTION_FRAMES`, that many
    frames evenly spread from ``start`` to ``end`` instead. The first frame is always ``start``, the
    reference pose. A clip with ``end <= start`` gives the single frame ``[start]``: too short to judge
    motion (the caller refuses it).
    """
    if not end > start:
        return [float(start)]
    candidates = [float(start), float(end), *map(float, range(math.ceil(start), math.floor(end) + 1))]
    candidates += [float(k) for k in keys if start <= k <= end]
    frames: list[float] = []
    for frame in sorted(candidates):
        if not frames or frame - frames[-1] > _SAME_FRAME:
            frames.append(frame)
    if frames[-1] != end:  # a key a hair before ``end`` was kept instead of it
        frames[-1] = float(end)
    if len(frames) > MAX_MOTION_FRAMES:
        return [float(f) for f in np.linspace(start, end, MAX_MOTION_FRAMES)]
    return frames


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
