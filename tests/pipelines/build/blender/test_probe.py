"""Probe reports of real rigged assets, procedural rigs and broken files, and the filter verdicts."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest

from pipelines.build.blender.probe import probe_asset
from pipelines.build.blender.session import BlenderSession
from pipelines.build.filters import check_probe
from schemas.assets import RejectReason
from schemas.filters import FilterRules
from tests import factories

# name: (bones, vertices, faces, {clip: (first frame, last frame)})
SHARED = {
    "CesiumMan.glb": (19, 3273, 4672, {"Anim_0": (1, 48)}),
    "Fox.glb": (24, 1728, 576, {"Run": (0, 28), "Survey": (0, 82), "Walk": (0, 17)}),
    "RiggedFigure.glb": (19, 370, 256, {"Anim_0": (0, 30)}),
    "RiggedSimple.glb": (2, 160, 188, {"Anim_0": (1, 50)}),
    "SimpleSkin.gltf": (2, 10, 8, {"Anim_0": (0, 132)}),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_gltf_assets_probe_and_pass_the_filters(session: BlenderSession, shared_gltf: Path, name: str) -> None:
    n_bones, n_vertices, n_faces, clips = SHARED[name]
    report = probe_asset(session, shared_gltf / name, "sha")
    assert report.ok, report.detail
    assert (report.n_armatures, report.n_meshes, report.n_skinned_meshes) == (1, 1, 1)
    assert (len(report.bones), report.n_vertices, report.n_faces) == (n_bones, n_vertices, n_faces)
    assert {c.name: (c.frame_start, c.frame_end) for c in report.clips} == clips
    assert all(c.motion > 0.05 and c.fps == 24.0 for c in report.clips)
    assert report.max_weight_sum_error < 1e-6 and not report.has_nan and not report.duplicate_bone_names
    seen: set[str] = set()
    for bone in report.bones:  # depth-first: a parent is listed before its children
        assert bone.parent is None or bone.parent in seen
        seen.add(bone.name)
    assert check_probe(report, FilterRules()) is None


def test_bounds_come_from_the_posed_geometry(session: BlenderSession, shared_gltf: Path) -> None:
    """CesiumMan is bound in a T-pose but walks with its arms down: bounds must be the walking pose."""
    report = probe_asset(session, shared_gltf / "CesiumMan.glb", "sha")
    mesh = next(o for o in bpy.data.objects if o.type == "MESH")
    rig = next(o for o in bpy.data.objects if o.type == "ARMATURE")
    bind_pose = np.array([mesh.matrix_world @ v.co for v in mesh.data.vertices])
    rig.animation_data.action = bpy.data.actions["Anim_0"]
    bpy.context.scene.frame_set(1)
    evaluated = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get())
    posed = np.array([evaluated.matrix_world @ v.co for v in evaluated.data.vertices])
    np.testing.assert_allclose(report.bounds_min, posed.min(axis=0), atol=1e-5)
    np.testing.assert_allclose(report.bounds_max, posed.max(axis=0), atol=1e-5)
    assert np.ptp(posed[:, 0]) < 0.6 * np.ptp(bind_pose[:, 0])  # arms down, not the T-pose


def test_procedural_rigid_robot_counts_bone_children(session: BlenderSession, procedural) -> None:
    report = probe_asset(session, procedural("rigid"), "sha")
    assert (report.n_skinned_meshes, report.n_rigid_children, report.n_armatures) == (0, report.n_meshes, 1)
    assert report.n_meshes > 1
    assert check_probe(report, FilterRules()) is None
    assert check_probe(report, FilterRules(allow_rigid_only=False))[0] is RejectReason.no_skinned_mesh


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (factories.no_armature_glb, RejectReason.no_armature),
        (factories.two_armatures_glb, RejectReason.multiple_armatures),
        (factories.bad_weights_glb, RejectReason.bad_weights),
        (factories.nan_positions_glb, RejectReason.nan_geometry),
        (factories.truncated_glb, RejectReason.import_error),
        (factories.random_bytes, RejectReason.import_error),
        (factories.zero_bytes, RejectReason.empty_file),
    ],
    ids=["no-armature", "two-armatures", "bad-weights", "nan-positions", "truncated", "random", "zero-bytes"],
)
def test_broken_assets_get_their_reason(session: BlenderSession, tmp_path: Path, make, reason: RejectReason) -> None:
    report = probe_asset(session, make(tmp_path), "sha")
    verdict = check_probe(report, FilterRules())
    assert verdict is not None and verdict[0] is reason, (verdict, report)


def test_the_broken_assets_defects_are_measured(session: BlenderSession, tmp_path: Path) -> None:
    bad = probe_asset(session, factories.bad_weights_glb(tmp_path), "sha")
    assert bad.max_weight_sum_error == pytest.approx(1.0 - factories.BAD_WEIGHT_SCALE, abs=1e-6)
    # The glTF importer zeroes NaN positions on import: the probe reads the file's own data.
    assert probe_asset(session, factories.nan_positions_glb(tmp_path), "sha").has_nan
    two = probe_asset(session, factories.two_armatures_glb(tmp_path), "sha")
    assert (two.n_armatures, len(two.bones), two.n_skinned_meshes) == (2, 2 * factories.CHAIN_BONES, 2)
    good = probe_asset(session, factories.good_glb(tmp_path), "sha")
    assert good.ok and not good.has_nan and good.n_armatures == 1 and good.max_weight_sum_error < 1e-6


def test_probe_timing_is_recorded(session: BlenderSession, procedural) -> None:
    report = probe_asset(session, procedural("arm"), "sha")
    assert report.seconds > 0 and report.sha256 == "sha"
