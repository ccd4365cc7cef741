"""Orbit cameras in the normalised object space, stored in the OpenCV convention (pure numpy).

Azimuth 0 is the input view: the camera on the -Y axis looking towards +Y, which is the front of a
glTF asset (glTF's +Z forward becomes Blender's -Y). Azimuth grows counter-clockwise seen from above
(90 degrees puts the camera on +X); elevation is above the XY plane. Every camera looks at the origin,
the centre of the normalised bounds, with world +Z up.
"""

from __future__ import annotations

import math

import numpy as np

from schemas.render import Camera


def orbit_cameras(n_views: int, elevation_deg: float, distance: float, fov_deg: float, resolution: int) -> list[Camera]:
    """``n_views`` cameras evenly spaced in azimuth from 0, at one elevation and distance."""
    k = intrinsics(fov_deg, resolution, resolution)
    cameras = []
    for view in range(n_views):
        azimuth = 360.0 * view / n_views
        cameras.append(
            Camera(
                view=view,
                azimuth_deg=azimuth,
                elevation_deg=elevation_deg,
                distance=distance,
                fov_deg=fov_deg,
                width=resolution,
                height=resolution,
                intrinsics=k.tolist(),
                extrinsics=look_at(orbit_position(azimuth, elevation_deg, distance)).tolist(),
            )
        )
    return cameras


def fit_distance(
    frames: list[np.ndarray], n_views: int, elevation_deg: float, fov_deg: float, fill: float, near: float = 0.05
) -> float:
    """The orbit distance at which the points (normalised, one array per frame) span exactly ``fill``
    of the image in the view and frame where they reach furthest, and stay inside it everywhere.

    In camera axes a point q = R p sits at depth q_z + d and projects inside the fraction ``fill``
    when |q_x|, |q_y| <= fill * tan(fov / 2) * (q_z + d): so d is a maximum over points, views and
    frames, computed exactly (no search). ``near`` keeps every point that far in front of the camera.
    """
    limit = fill * math.tan(math.radians(fov_deg) / 2.0)
    rotations = [look_at(orbit_position(360.0 * v / n_views, elevation_deg, 1.0))[:3, :3] for v in range(n_views)]
    distance = 0.0
    for points in frames:
        for rotation in rotations:
            q = points @ rotation.T
            needed = np.maximum(np.abs(q[:, :2]).max(axis=1) / limit, near) - q[:, 2]
            distance = max(distance, float(needed.max()))
    return distance


def orbit_position(azimuth_deg: float, elevation_deg: float, distance: float) -> np.ndarray:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return distance * np.array([math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el)])


def look_at(position: np.ndarray, target: np.ndarray = np.zeros(3)) -> np.ndarray:
    """World-to-camera 4x4 (OpenCV: x right, y down, z forward) for a camera at ``position``."""
    forward = target - position
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    norm = np.linalg.norm(right)
    if norm < 1e-9:
        raise ValueError("the camera looks straight up or down: the orbit needs |elevation| < 90")
    right /= norm
    down = np.cross(forward, right)
    extrinsics = np.eye(4)
    extrinsics[:3, :3] = np.stack([right, down, forward])
    extrinsics[:3, 3] = -extrinsics[:3, :3] @ position
    return extrinsics


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """K in pixels for a horizontal field of view; the principal point is the image centre, with
    pixel (i, j) covering [i, i+1] x [j, j+1] (origin at the top-left corner)."""
    focal = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def blender_matrix_world(camera: Camera, scale: float, offset: np.ndarray) -> np.ndarray:
    """The Blender camera object's world matrix (it looks down its local -Z with +Y up) in the
    asset's original world space, where ``normalised = (world + offset) * scale``."""
    extrinsics = np.asarray(camera.extrinsics)
    rotation = extrinsics[:3, :3]
    centre = -rotation.T @ extrinsics[:3, 3]
    matrix = np.eye(4)
    matrix[:3, 0] = rotation[0]
    matrix[:3, 1] = -rotation[1]
    matrix[:3, 2] = -rotation[2]
    matrix[:3, 3] = centre / scale - offset
    return matrix


def project(camera: Camera, points: np.ndarray) -> np.ndarray:
    """Pixel coordinates [N, 2] of normalised-space points [N, 3] (OpenCV convention)."""
    extrinsics = np.asarray(camera.extrinsics)
    in_camera = points @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    pixels = in_camera @ np.asarray(camera.intrinsics).T
    return pixels[:, :2] / pixels[:, 2:3]
