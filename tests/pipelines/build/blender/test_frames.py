"""Frame sampling: the render grid's stride grows until consecutive frames move enough; the parts'
sampling is fixed by the clip alone."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.build.blender.frames import MAX_MOTION_FRAMES, motion_frames, sample_frames


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


# -- the fixed sampling parts are decided at ------------------------------------------------------


def test_motion_frames_are_every_whole_frame_the_ends_and_the_keys() -> None:
    whole = [float(f) for f in range(26)]
    assert motion_frames(0.0, 27.8, keys=[0.0, 25.8, 26.8, 27.8]) == whole + [25.8, 26.0, 26.8, 27.0, 27.8]
    assert motion_frames(1.5, 4.0) == [1.5, 2.0, 3.0, 4.0]


def test_motion_frames_ignore_keys_outside_the_clip_and_near_duplicates() -> None:
    assert motion_frames(0.0, 3.0, keys=[-1.0, 1.00001, 2.5, 7.0]) == [0.0, 1.0, 2.0, 2.5, 3.0]


def test_motion_frames_do_not_depend_on_how_many_frames_a_grid_renders() -> None:
    """They take no grid parameter at all; the same clip always gives the same frames."""
    assert motion_frames(0.0, 48.0, keys=[0.0, 3.0, 48.0]) == [float(f) for f in range(49)]


def test_long_clips_are_measured_at_the_cap_evenly_spread() -> None:
    frames = motion_frames(0.0, 1000.0, keys=[0.5])
    assert len(frames) == MAX_MOTION_FRAMES
    assert frames[0] == 0.0 and frames[-1] == 1000.0
    assert np.allclose(np.diff(frames), 1000.0 / (MAX_MOTION_FRAMES - 1))


@pytest.mark.parametrize("start, end", [(5.0, 5.0), (5.0, 4.0)])
def test_a_clip_of_one_frame_gives_one_motion_frame(start: float, end: float) -> None:
    assert motion_frames(start, end, keys=[start]) == [start]
