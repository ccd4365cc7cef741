"""Frames without re-work: between views only the camera changes, and the held pose is the frame's."""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from pipelines.build.blender import clips as clip_ops
from pipelines.build.blender import scene
from pipelines.build.blender.render import _render_still, each_cell, render_grid
from pipelines.build.blender.session import BlenderSession
from schemas.render import RenderSpec


def _rig_meshes() -> list[bpy.types.Object]:
    return [o for o in bpy.context.scene.objects if o.type == "MESH" and not o.hide_render]


def test_between_views_only_the_camera_is_updated(session: BlenderSession, shared_gltf: Path) -> None:
    """What the render operator re-evaluates before each image (``frame_change_post`` sees the
    render's frame update): after the first view of a frame, the camera and nothing else."""
    session.load(shared_gltf / "CesiumMan.glb")
    grid = render_grid(session, "Anim_0", RenderSpec(n_views=3, n_frames=2, resolution=16, samples=1, threads=2), seed=0)
    updated: list[set[str]] = []

    def record(_scene, depsgraph) -> None:
        updated[-1] |= {u.id.name for u in depsgraph.updates}  # any update: geometry, transform, shading

    bpy.app.handlers.frame_change_post.append(record)
    try:
        with session.capture():
            for v, _ in each_cell(grid.cameras, grid.frame_times, grid.normalisation_scale, np.asarray(grid.normalisation_offset)):
                updated.append(set())
                _render_still()
                updated[-1] = (v, updated[-1])
    finally:
        bpy.app.handlers.frame_change_post.remove(record)
    after_camera_moves = [names for v, names in updated if v > 0]
    assert len(after_camera_moves) == 4
    assert all(names == {"kp_camera"} for names in after_camera_moves)
    meshes = {o.name for o in _rig_meshes()}
    assert all(meshes <= names for v, names in updated if v == 0)  # a new frame deforms the mesh


def test_the_held_pose_is_the_frame_pose_and_the_clip_plays_again_after(session: BlenderSession, procedural) -> None:
    session.load(procedural("arm"))
    clip = clip_ops.find_clip("wave")
    clip_ops.play(clip)
    mesh = _rig_meshes()[0]
    for frame in (3.0, 17.5):
        live = scene.evaluated_positions(mesh, scene.set_frame(frame))
        with clip_ops.held_pose():
            bpy.context.view_layer.update()
            held = scene.evaluated_positions(mesh, bpy.context.evaluated_depsgraph_get())
            assert all(o.animation_data is None or o.animation_data.action is None for o in bpy.data.objects)
        np.testing.assert_array_equal(held, live)
    moved = scene.evaluated_positions(mesh, scene.set_frame(9.0))
    assert np.abs(moved - live).max() > 1e-3  # the action drives the rig again
