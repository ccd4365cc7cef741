"""Filter rules over a probe report: accept an asset and its clips, or say why not.

Checks run in this fixed order and the first failure is the reason recorded:

 1. the probe failed          -> the probe's own reason (``import_error`` when it gave none)
 2. ``no_armature``           no armature
 3. ``multiple_armatures``    more than ``max_armatures``
 4. ``no_skinned_mesh``       no skinned mesh (meshes parented to bones count when ``allow_rigid_only``)
 5. ``too_few_bones``         fewer than ``min_bones``
 6. ``too_many_bones``        more than ``max_bones``
 7. ``too_many_faces``        more than ``max_faces``
 8. ``bad_weights``           raw weight sums further than ``max_weight_sum_error`` from 1, or
                              duplicate bone names (vertex groups bind to bones by name)
 9. ``nan_geometry``          NaN or infinity in the geometry
10. ``no_animation``          no clips at all
11. per clip: ``clip_not_found`` (a wanted clip is missing), ``no_animation`` (fewer than
    ``min_frames`` frames, counted inclusively: ``frame_end - frame_start + 1``), ``static_animation``
    (``motion`` below ``min_motion``).

Steps 1-10 are about the asset, step 11 about one clip. Rejections of the whole asset carry the clip
name ``""`` (the default of ``Rejection.clip``).
"""

from __future__ import annotations

from schemas.assets import ClipInfo, ProbeReport, RejectReason
from schemas.filters import FilterRules

Verdict = tuple[RejectReason, str]


def check_probe(report: ProbeReport, rules: FilterRules, clip: str | None = None) -> Verdict | None:
    """None when the asset passes (and ``clip``, when named, is usable); else (reason, detail).

    Without ``clip``, the asset passes when at least one of its clips is usable; when none is, the
    reason is ``static_animation`` if some clip is long enough but none moves, else ``no_animation``.
    """
    verdict = _check_asset(report, rules)
    if verdict is not None:
        return verdict
    if clip is not None:
        return _check_clip(_find_clip(report, clip), clip, rules)
    verdicts = [_check_clip(c, c.name, rules) for c in report.clips]
    if any(v is None for v in verdicts):
        return None
    static = [v for v in verdicts if v[0] is RejectReason.static_animation]
    if static:
        return RejectReason.static_animation, f"no clip moves: {'; '.join(d for _, d in static)}"
    return RejectReason.no_animation, f"no clip has {rules.min_frames} frames or more"


def select_clips(
    report: ProbeReport, rules: FilterRules, wanted: list[str] | None = None
) -> tuple[list[str], list[tuple[str, RejectReason, str]]]:
    """The usable clips of an asset, and one (clip, reason, detail) per clip left out.

    ``wanted`` names the clips to consider, in order (duplicates count once); None means every clip
    of the report. When the asset itself fails, nothing is accepted and the one rejection has clip "".
    """
    verdict = _check_asset(report, rules)
    if verdict is not None:
        return [], [("", *verdict)]
    names = list(dict.fromkeys(c.name for c in report.clips) if wanted is None else dict.fromkeys(wanted))
    accepted: list[str] = []
    rejected: list[tuple[str, RejectReason, str]] = []
    for name in names:
        clip_verdict = _check_clip(_find_clip(report, name), name, rules)
        if clip_verdict is None:
            accepted.append(name)
        else:
            rejected.append((name, *clip_verdict))
    return accepted, rejected


def _check_asset(report: ProbeReport, rules: FilterRules) -> Verdict | None:
    """Steps 1-10 of the module doc."""
    if not report.ok:
        return report.reason or RejectReason.import_error, report.detail
    if report.n_armatures == 0:
        return RejectReason.no_armature, "no armature found"
    if report.n_armatures > rules.max_armatures:
        return RejectReason.multiple_armatures, f"{report.n_armatures} armatures > max_armatures {rules.max_armatures}"
    rigid_only = rules.allow_rigid_only and report.n_rigid_children > 0
    if report.n_skinned_meshes == 0 and not rigid_only:
        return RejectReason.no_skinned_mesh, (
            f"{report.n_meshes} meshes, none skinned"
            + (f"; {report.n_rigid_children} rigid children not allowed" if report.n_rigid_children else "")
        )
    n_bones = len(report.bones)
    if n_bones < rules.min_bones:
        return RejectReason.too_few_bones, f"{n_bones} bones < min_bones {rules.min_bones}"
    if n_bones > rules.max_bones:
        return RejectReason.too_many_bones, f"{n_bones} bones > max_bones {rules.max_bones}"
    if report.n_faces > rules.max_faces:
        return RejectReason.too_many_faces, f"{report.n_faces} faces > max_faces {rules.max_faces}"
    # Written as "not <=" so that a NaN measurement fails the check instead of passing it.
    if not report.max_weight_sum_error <= rules.max_weight_sum_error:
        error, limit = report.max_weight_sum_error, rules.max_weight_sum_error
        return RejectReason.bad_weights, f"weight sums off by {error:.3g} > max_weight_sum_error {limit:g}"
    if report.duplicate_bone_names:
        return RejectReason.bad_weights, "duplicate bone names"
    if report.has_nan:
        return RejectReason.nan_geometry, "NaN or infinite values in the geometry"
    if not report.clips:
        return RejectReason.no_animation, "no animation clips"
    return None


def _find_clip(report: ProbeReport, name: str) -> ClipInfo | None:
    return next((c for c in report.clips if c.name == name), None)


def _check_clip(clip: ClipInfo | None, name: str, rules: FilterRules) -> Verdict | None:
    """Step 11 of the module doc."""
    if clip is None:
        return RejectReason.clip_not_found, f"clip {name!r} not in the asset"
    n_frames = clip.frame_end - clip.frame_start + 1
    if n_frames < rules.min_frames:
        return RejectReason.no_animation, f"clip {name!r} has {n_frames} frames < min_frames {rules.min_frames}"
    if not clip.motion >= rules.min_motion:  # NaN motion is not motion
        return RejectReason.static_animation, f"clip {name!r} moves {clip.motion:.3g} < min_motion {rules.min_motion:g}"
    return None
