"""Filter rules: one reason code per defect, in the documented order, and per-clip selection."""

from __future__ import annotations

import math

import pytest

from pipelines.build.filters import check_probe, select_clips
from schemas.assets import BoneInfo, ClipInfo, ProbeReport, RejectReason
from schemas.filters import FilterRules

RULES = FilterRules()  # 2..100 bones, 500k faces, 1 armature, motion >= 0.01, >= 2 frames, weight error <= 1e-3


def bones(n: int) -> list[BoneInfo]:
    return [
        BoneInfo(name=f"b{i}", parent=f"b{i - 1}" if i else None, head=[0, i, 0], tail=[0, i + 1, 0]) for i in range(n)
    ]


def good_report(**changes) -> ProbeReport:
    """A report that passes every rule; each test changes what it is about."""
    fields = dict(
        sha256="ab" * 32,
        ok=True,
        n_armatures=1,
        bones=bones(3),
        n_meshes=1,
        n_skinned_meshes=1,
        n_vertices=100,
        n_faces=196,
        clips=[
            ClipInfo(name="walk", frame_start=1, frame_end=24, fps=24, motion=0.3),
            ClipInfo(name="idle", frame_start=0, frame_end=10, fps=24, motion=0.001),
            ClipInfo(name="pose", frame_start=5, frame_end=5, fps=24, motion=0.5),
        ],
    )
    fields.update(changes)
    return ProbeReport(**fields)


def test_a_good_report_passes():
    assert check_probe(good_report(), RULES) is None
    assert check_probe(good_report(), RULES, clip="walk") is None


@pytest.mark.parametrize(
    "changes, reason, detail",
    [
        (
            dict(ok=False, reason=RejectReason.timeout, detail="probe took 60 s"),
            RejectReason.timeout,
            "probe took 60 s",
        ),
        (dict(ok=False, detail="not a glTF file"), RejectReason.import_error, "not a glTF file"),
        (dict(n_armatures=0), RejectReason.no_armature, "no armature found"),
        (dict(n_armatures=2), RejectReason.multiple_armatures, "2 armatures > max_armatures 1"),
        (dict(n_skinned_meshes=0), RejectReason.no_skinned_mesh, "1 meshes, none skinned"),
        (dict(bones=bones(1)), RejectReason.too_few_bones, "1 bones < min_bones 2"),
        (dict(bones=bones(101)), RejectReason.too_many_bones, "101 bones > max_bones 100"),
        (dict(n_faces=500_001), RejectReason.too_many_faces, "500001 faces > max_faces 500000"),
        (
            dict(max_weight_sum_error=0.4),
            RejectReason.bad_weights,
            "weight sums off by 0.4 > max_weight_sum_error 0.001",
        ),
        (dict(max_weight_sum_error=math.nan), RejectReason.bad_weights, "weight sums off by nan"),
        (dict(duplicate_bone_names=True), RejectReason.bad_weights, "duplicate bone names"),
        (dict(has_nan=True), RejectReason.nan_geometry, "NaN or infinite values in the geometry"),
        (dict(clips=[]), RejectReason.no_animation, "no animation clips"),
    ],
)
def test_each_defect_gives_its_reason(changes, reason, detail):
    verdict = check_probe(good_report(**changes), RULES)
    assert verdict is not None
    assert verdict[0] is reason
    assert verdict[1].startswith(detail)


def test_thresholds_are_inclusive_limits():
    assert check_probe(good_report(bones=bones(2)), RULES) is None  # == min_bones
    assert check_probe(good_report(bones=bones(100)), RULES) is None  # == max_bones
    assert check_probe(good_report(n_faces=500_000), RULES) is None
    assert check_probe(good_report(max_weight_sum_error=1e-3), RULES) is None
    assert check_probe(good_report(), FilterRules(max_bones=2)) == (
        RejectReason.too_many_bones,
        "3 bones > max_bones 2",
    )


def test_rigid_children_count_as_skinning_only_when_allowed():
    rigid = good_report(n_skinned_meshes=0, n_rigid_children=2)
    assert check_probe(rigid, RULES) is None
    assert check_probe(rigid, FilterRules(allow_rigid_only=False)) == (
        RejectReason.no_skinned_mesh,
        "1 meshes, none skinned; 2 rigid children not allowed",
    )


def test_checks_run_in_the_documented_order():
    # Every defect at once: removing them one by one, in the documented order, walks the reasons.
    defects = [
        (dict(ok=False), RejectReason.import_error),
        (dict(n_armatures=0), RejectReason.no_armature),
        (dict(n_armatures=3), RejectReason.multiple_armatures),
        (dict(n_skinned_meshes=0), RejectReason.no_skinned_mesh),
        (dict(bones=bones(1)), RejectReason.too_few_bones),
        (dict(bones=bones(150)), RejectReason.too_many_bones),
        (dict(n_faces=10**6), RejectReason.too_many_faces),
        (dict(max_weight_sum_error=0.5), RejectReason.bad_weights),
        (dict(has_nan=True), RejectReason.nan_geometry),
        (dict(clips=[]), RejectReason.no_animation),
    ]
    # Two pairs share a field (armatures, bones): applying the list backwards lets the earlier defect win.
    for first in range(len(defects)):
        changes: dict = {}
        for change, _ in reversed(defects[first:]):
            changes.update(change)
        verdict = check_probe(good_report(**changes), RULES)
        assert verdict is not None and verdict[0] is defects[first][1], (first, verdict)


@pytest.mark.parametrize(
    "clip, verdict",
    [
        ("walk", None),
        ("idle", (RejectReason.static_animation, "clip 'idle' moves 0.001 < min_motion 0.01")),
        ("pose", (RejectReason.no_animation, "clip 'pose' has 1 frames < min_frames 2")),
        ("jump", (RejectReason.clip_not_found, "clip 'jump' not in the asset")),
    ],
)
def test_a_named_clip_is_checked_on_its_own(clip, verdict):
    assert check_probe(good_report(), RULES, clip=clip) == verdict


def test_frames_count_inclusively():
    two_frames = ClipInfo(name="blink", frame_start=3, frame_end=4, fps=24, motion=0.2)
    assert check_probe(good_report(clips=[two_frames]), RULES) is None
    assert check_probe(good_report(clips=[two_frames]), FilterRules(min_frames=3))[0] is RejectReason.no_animation


def test_nan_motion_is_static():
    clip = ClipInfo(name="walk", frame_start=1, frame_end=24, fps=24, motion=math.nan)
    assert check_probe(good_report(clips=[clip]), RULES)[0] is RejectReason.static_animation


def test_asset_without_a_usable_clip_names_the_closest_reason():
    idle_and_pose = good_report().clips[1:]
    verdict = check_probe(good_report(clips=idle_and_pose), RULES)
    assert verdict == (RejectReason.static_animation, "no clip moves: clip 'idle' moves 0.001 < min_motion 0.01")
    only_pose = good_report().clips[2:]
    assert check_probe(good_report(clips=only_pose), RULES) == (
        RejectReason.no_animation,
        "no clip has 2 frames or more",
    )


def test_select_clips_accepts_and_rejects_per_clip_in_report_order():
    accepted, rejected = select_clips(good_report(), RULES, None)
    assert accepted == ["walk"]
    assert [(clip, reason) for clip, reason, _ in rejected] == [
        ("idle", RejectReason.static_animation),
        ("pose", RejectReason.no_animation),
    ]


def test_select_clips_follows_the_wanted_list_once_per_name():
    accepted, rejected = select_clips(good_report(), RULES, ["jump", "walk", "walk", "idle"])
    assert accepted == ["walk"]
    assert rejected == [
        ("jump", RejectReason.clip_not_found, "clip 'jump' not in the asset"),
        ("idle", RejectReason.static_animation, "clip 'idle' moves 0.001 < min_motion 0.01"),
    ]


def test_select_clips_rejects_a_bad_asset_once_with_an_empty_clip_name():
    accepted, rejected = select_clips(good_report(n_armatures=2), RULES, ["walk", "idle"])
    assert accepted == []
    assert rejected == [("", RejectReason.multiple_armatures, "2 armatures > max_armatures 1")]


def test_select_clips_of_a_probe_failure_passes_its_reason_through():
    failed = ProbeReport(sha256="cd" * 32, ok=False, reason=RejectReason.crashed, detail="signal 11")
    assert select_clips(failed, RULES, None) == ([], [("", RejectReason.crashed, "signal 11")])
