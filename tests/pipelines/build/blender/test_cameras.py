"""Orbit cameras and their OpenCV convention, and the exact frame fit (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.build.blender.cameras import blender_matrix_world, fit_distance, look_at, orbit_cameras, project


def test_intrinsics_put_the_axis_at_the_centre_and_the_fov_at_the_edge() -> None:
    (camera,) = orbit_cameras(1, 0.0, 2.0, 40.0, 64)
    at_edge = np.array([[math.tan(math.radians(20.0)) * 2.0, 0.0, 0.0]])  # on the image plane through the origin
    np.testing.assert_allclose(project(camera, np.zeros((1, 3))), [[32.0, 32.0]])
    np.testing.assert_allclose(project(camera, at_edge), [[64.0, 32.0]], atol=1e-9)


def test_orbit_starts_in_front_and_turns_counter_clockwise() -> None:
    cameras = orbit_cameras(4, 0.0, 3.0, 40.0, 32)
    centres = [-np.asarray(c.extrinsics)[:3, :3].T @ np.asarray(c.extrinsics)[:3, 3] for c in cameras]
    np.testing.assert_allclose(centres, [[0, -3, 0], [3, 0, 0], [0, 3, 0], [-3, 0, 0]], atol=1e-9)
    assert [c.azimuth_deg for c in cameras] == [0.0, 90.0, 180.0, 270.0]


def test_extrinsics_are_rigid_and_world_up_is_image_up() -> None:
    for camera in orbit_cameras(5, 25.0, 2.0, 40.0, 32):
        extrinsics = np.asarray(camera.extrinsics)
        rotation = extrinsics[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        top, bottom = project(camera, np.array([[0, 0, 0.3], [0, 0, -0.3]]))
        assert top[1] < 16.0 < bottom[1]


def test_blender_camera_matrix_matches_the_opencv_camera() -> None:
    scale, offset = 0.25, np.array([1.0, -2.0, 0.5])
    for camera in orbit_cameras(3, 10.0, 2.2, 40.0, 32):
        matrix = blender_matrix_world(camera, scale, offset)
        extrinsics = np.asarray(camera.extrinsics)
        centre = -extrinsics[:3, :3].T @ extrinsics[:3, 3]
        np.testing.assert_allclose((matrix[:3, 3] + offset) * scale, centre, atol=1e-12)
        np.testing.assert_allclose(-matrix[:3, 2], extrinsics[2, :3], atol=1e-12)  # Blender looks down -Z
        np.testing.assert_allclose(matrix[:3, 1], -extrinsics[1, :3], atol=1e-12)  # Blender +Y is image up


def test_look_at_refuses_a_camera_straight_overhead() -> None:
    with pytest.raises(ValueError, match="elevation"):
        look_at(np.array([0.0, 0.0, 2.0]))


@pytest.mark.parametrize("elevation", [0.0, 10.0, 40.0])
def test_fit_distance_makes_the_points_span_exactly_the_fill(elevation: float) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.uniform(-0.5, 0.5, size=(200, 3)) * [1.0, 0.3, 0.8] for _ in range(3)]
    fill, resolution = 0.9, 64
    distance = fit_distance(frames, 4, elevation, 40.0, fill)
    reach = 0.0
    for camera in orbit_cameras(4, elevation, distance, 40.0, resolution):
        for points in frames:
            reach = max(reach, float(np.abs(project(camera, points) - resolution / 2).max()))
    assert reach / (resolution / 2) == pytest.approx(fill, abs=1e-9)
