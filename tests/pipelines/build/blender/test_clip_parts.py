"""Kinematic parts belong to the clip, not to the render grid: every render of a clip, whatever its
frames, views and resolution, carries the same bone-to-part map and palette, and a bone that moves
only between the frames a grid shows still gets its own part."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
import pytest

from pipelines.build.blender import clips as clip_ops
from pipelines.build.blender import scene
from pipelines.build.blender.render import RenderedGrid, render_grid
from pipelines.build.blender.session import BlenderSession
from pipelines.build.parts import PartsError
from schemas.assets import RejectReason
from schemas.render import RenderSpec
from tests import factories

TINY = dict(samples=1, denoise=False, threads=2)
# 1, 2, 4 and 8 frames, each with its own views and resolution (and a stride threshold that the
# default render grid uses, so the frames differ between grids as they do in a real build).
GRIDS = [
    RenderSpec(n_views=1, n_frames=1, resolution=32, **TINY),
    RenderSpec(n_views=2, n_frames=2, resolution=24, **TINY),
    RenderSpec(n_views=3, n_frames=4, resolution=16, elevation_deg=30.0, **TINY),
    RenderSpec(n_views=2, n_frames=8, resolution=32, motion_threshold=0.05, **TINY),
]
SHARED = [
    ("CesiumMan.glb", "Anim_0"),
    ("Fox.glb", "Run"),
    ("Fox.glb", "Survey"),
    ("Fox.glb", "Walk"),
    ("RiggedFigure.glb", "Anim_0"),
    ("RiggedSimple.glb", "Anim_0"),
    ("SimpleSkin.gltf", "Anim_0"),
]
PROCEDURAL = [("arm", "wave"), ("snake", "slither"), ("biped", "walk"), ("rigid", "operate")]


def _render_every_grid(session: BlenderSession, path: Path, clip: str, grids: list[RenderSpec]) -> list[RenderedGrid]:
    rendered = []
    for spec in grids:
        session.load(path)
        rendered.append(render_grid(session, clip, spec, seed=0))
    return rendered


def _check_same_parts_in_every_grid(rendered: list[RenderedGrid]) -> None:
    first = rendered[0].part_map
    assert first.n_parts > 1, "a one-frame render must not collapse the asset into one part"
    assert len(first.motion_frames) > 1
    for grid, spec in zip(rendered, GRIDS, strict=True):
        assert grid.part_ids.shape == (spec.n_views, spec.n_frames, spec.resolution, spec.resolution)
        assert grid.part_map.bone_to_part == first.bone_to_part
        assert grid.part_map.part_names == first.part_names
        assert grid.part_map.palette == first.palette
        assert grid.part_map == first  # centroids, reference normalisation and motion evidence too
        # and the pixels carry it: each part is drawn in exactly its palette colour
        palette = np.asarray(first.palette, np.uint8)
        foreground = grid.part_ids >= 0
        np.testing.assert_array_equal(grid.parts[foreground], palette[grid.part_ids[foreground]])
    frame_sets = {tuple(grid.frame_times) for grid in rendered}
    assert len(frame_sets) == len(GRIDS), "the grids must really show different frames"


@pytest.mark.parametrize("name, clip", SHARED, ids=[f"{n}-{c}" for n, c in SHARED])
def test_shared_assets_get_one_part_map_for_every_grid(
    session: BlenderSession, shared_gltf: Path, name: str, clip: str
) -> None:
    _check_same_parts_in_every_grid(_render_every_grid(session, shared_gltf / name, clip, GRIDS))


@pytest.mark.parametrize("kind, clip", PROCEDURAL, ids=[k for k, _ in PROCEDURAL])
def test_procedural_rigs_get_one_part_map_for_every_grid(session: BlenderSession, procedural, kind: str, clip: str) -> None:
    _check_same_parts_in_every_grid(_render_every_grid(session, procedural(kind), clip, GRIDS))


def test_a_bone_moving_only_between_the_rendered_frames_still_gets_its_own_part(
    session: BlenderSession, tmp_path: Path
) -> None:
    """The tip bone of ``twitch.glb`` leaves its rest pose only between frames 1 and 5. A grid that
    spreads its frames over the clip (an unreachable stride threshold) never shows that: at every
    rendered frame the tip is at rest relative to its parent, which is all a rule judging motion on
    the rendered frames could see. Deciding on the whole clip gives it its own part all the same."""
    path = factories.twitch_glb(tmp_path)
    spread = [spec.model_copy(update={"motion_threshold": 10.0}) for spec in GRIDS]
    rendered = _render_every_grid(session, path, "swing", spread)
    first_twitch, _, last_twitch = factories.TWITCH_FRAMES
    for grid in rendered:
        assert not any(first_twitch < t < last_twitch for t in grid.frame_times), grid.frame_times
        # the premise, checked in Blender: at each rendered frame the tip is in its rest pose
        for frame in grid.frame_times:
            scene.set_frame(frame)
            pose = np.array(bpy.data.objects[_armature_name()].pose.bones["a_3"].matrix_basis)
            np.testing.assert_allclose(pose, np.eye(4), atol=1e-6)
        assert grid.part_map.bone_to_part == {"a_1": 0, "a_2": 1, "a_3": 2}
        assert grid.part_map == rendered[0].part_map
    motion = dict(zip(rendered[0].part_map.bone_to_part, rendered[0].part_map.bone_motion))
    assert motion["a_3"] > 100 * GRIDS[0].parts.min_relative_motion
    # the tip's part is drawn: its colour is in the pictures of the grids that show enough of it
    assert (rendered[-1].part_ids == 2).any()


def _armature_name() -> str:
    (armature,) = scene.armatures()
    return armature.name


def test_a_clip_of_one_frame_is_refused_with_its_reason(session: BlenderSession, tmp_path: Path) -> None:
    session.load(factories.single_frame_glb(tmp_path))
    (clip,) = clip_ops.list_clips()
    assert clip.frame_start == clip.frame_end
    with pytest.raises(PartsError) as caught:
        render_grid(session, clip.name, GRIDS[0], seed=0)
    assert caught.value.reason is RejectReason.clip_too_short
    assert "single frame" in caught.value.detail


def test_a_stored_part_map_is_used_as_given(session: BlenderSession, shared_gltf: Path) -> None:
    """Rendering with a known part map decides nothing: a map whose palette differs from what the
    clip would give (the colours reversed) comes back as given, and the pixels follow it."""
    path = shared_gltf / "RiggedFigure.glb"
    (decided,) = _render_every_grid(session, path, "Anim_0", GRIDS[1:2])
    stored = decided.part_map.model_copy(update={"palette": decided.part_map.palette[::-1]})
    session.load(path)
    again = render_grid(session, "Anim_0", GRIDS[1], seed=0, parts=stored)
    assert again.part_map == stored
    np.testing.assert_array_equal(again.part_ids, decided.part_ids)
    foreground = again.part_ids >= 0
    np.testing.assert_array_equal(again.parts[foreground], np.asarray(stored.palette, np.uint8)[again.part_ids[foreground]])


def test_a_stored_part_map_of_other_bones_is_refused(session: BlenderSession, shared_gltf: Path) -> None:
    (fox,) = _render_every_grid(session, shared_gltf / "Fox.glb", "Walk", GRIDS[:1])
    session.load(shared_gltf / "RiggedFigure.glb")
    with pytest.raises(PartsError) as caught:
        render_grid(session, "Anim_0", GRIDS[0], seed=0, parts=fox.part_map)
    assert "parts table" in caught.value.detail
