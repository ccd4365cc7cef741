"""Frame sampling: the stride grows until consecutive frames move enough."""

from __future__ import annotations

import pytest

from pipelines.build.blender.frames import sample_frames


def test_stride_grows_until_each_step_moves_enough() -> None:
    calls: list[tuple[float, float]] = []

    def motion(a: float, b: float) -> float:
        calls.append((a, b))
        return abs(b - a) * 0.004  # 0.4% of the size per frame

    assert sample_frames(10.0, 100.0, 4, motion, threshold=0.01) == [10.0, 13.0, 16.0, 19.0]
    assert max(b for _, b in calls) <= 19.0  # no stride beyond the first that works was tried


def test_no_stride_moves_enough_spreads_over_the_clip() -> None:
    assert sample_frames(0.0, 48.0, 4, lambda a, b: 0.0, threshold=0.01) == [0.0, 16.0, 32.0, 48.0]


def test_a_pause_in_the_motion_pushes_the_stride_past_it() -> None:
    def motion(a: float, b: float) -> float:  # frames 2..4 are a hold
        moving = [f for f in range(int(a), int(b)) if not 2 <= f < 4]
        return 0.01 * len(moving)

    # stride 2 would step 2 -> 4 across the hold; stride 3 moves two frames in every step
    assert sample_frames(0.0, 30.0, 3, motion, threshold=0.02) == [0.0, 3.0, 6.0]


def test_short_clip_is_sampled_at_fractional_frames() -> None:
    assert sample_frames(1.0, 2.0, 3, lambda a, b: 1.0, threshold=0.01) == [1.0, 1.5, 2.0]


def test_single_frame() -> None:
    assert sample_frames(5.0, 9.0, 1, lambda a, b: 1.0, threshold=0.01) == [5.0]


def test_rejects_zero_frames() -> None:
    with pytest.raises(ValueError):
        sample_frames(0.0, 1.0, 0, lambda a, b: 1.0, threshold=0.01)
