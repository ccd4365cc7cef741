"""Broken and awkward assets for tests, each written into a folder; every function returns the Path.

The glTF ones are real, loadable files with exactly one defect (a small animated chain of bones with a
skinned tube, changed in one way), so a test of a rejection reason meets only that defect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines.build.sources.gltf_writer import Channel, GlbBuilder
from pipelines.build.sources.procedural import generate_rig_bytes
from pipelines.build.sources.rig_geometry import Tube, tube_mesh

CHAIN_BONES = 3
BONE_LENGTH = 0.4
NAN_VERTICES = 5
NAN_KEYS_FROM = 12  # of 25 keys over 2 s: NaN from t = 1 s (frame 24 at 24 fps)
BAD_WEIGHT_SCALE = 0.6  # 0.5/0.5 rows at the joints become 0.3/0.3, single rows 0.6
FPS = 24  # Blender's default scene rate, which the glTF importer keeps
TWITCH_FRAMES = (1, 3, 5)  # the tip bone leaves its rest at frame 1, peaks at 3, is back at 5


def good_glb(folder: Path, kind: str = "arm", seed: int = 0) -> Path:
    """A valid procedural asset (the control for the broken ones)."""
    return _write(folder, f"good-{kind}-{seed}.glb", generate_rig_bytes(kind, seed))


def no_armature_glb(folder: Path) -> Path:
    """A closed mesh moved by its own node animation: animated, but no skin and no joints."""
    return _write(folder, "no-armature.glb", _chains_glb(n_chains=1, skinned=False))


def two_armatures_glb(folder: Path) -> Path:
    """Two separate joint trees, each with its own skin and skinned mesh, animated by one clip."""
    return _write(folder, "two-armatures.glb", _chains_glb(n_chains=2))


def bad_weights_glb(folder: Path) -> Path:
    """A skinned chain whose per-vertex weights sum to 0.6 instead of 1."""
    return _write(folder, "bad-weights.glb", _chains_glb(weight_scale=BAD_WEIGHT_SCALE))


def nan_positions_glb(folder: Path) -> Path:
    """A skinned chain with NaN in the positions of its first few vertices.

    Blender 5's importer zeroes non-finite positions (``mesh.validate()``), so this defect is only
    visible in the file itself; :func:`nan_animation_glb` is the NaN that survives into Blender.
    """
    return _write(folder, "nan-positions.glb", _chains_glb(nan_vertices=NAN_VERTICES))


def nan_animation_glb(folder: Path) -> Path:
    """A skinned chain whose rotation keys are NaN from the middle of the clip on: the evaluated
    (deformed) mesh has NaN vertices at those frames."""
    return _write(folder, "nan-animation.glb", _chains_glb(nan_keys_from=NAN_KEYS_FROM))


def twitch_glb(folder: Path) -> Path:
    """A skinned chain of CHAIN_BONES bones over a 2 s clip (frames 0-48): the middle bone swings
    about Z all clip long, and the tip bone twitches about X relative to it only between frames 1
    and 5 of :data:`TWITCH_FRAMES` (60 degrees at frame 3), holding its rest pose at every other frame."""
    times = np.linspace(0.0, 2.0, 25)
    angles = np.radians(40.0) * np.sin(np.pi * times)
    swing = np.column_stack([np.zeros((len(times), 2)), np.sin(angles / 2), np.cos(angles / 2)])
    start, peak, end = (f / FPS for f in TWITCH_FRAMES)
    twitch_times = np.array([0.0, start, peak, end, 2.0])
    half = np.radians([0.0, 0.0, 60.0, 0.0, 0.0]) / 2
    twitch = np.column_stack([np.sin(half), np.zeros((5, 2)), np.cos(half)])
    return _write(folder, "twitch.glb", _chains_glb(channels=lambda joints: [
        Channel(joints[1], "rotation", times, swing), Channel(joints[2], "rotation", twitch_times, twitch),
    ]))


def single_frame_glb(folder: Path) -> Path:
    """A skinned chain whose only clip is one pose: its two keys lie 1e-5 s apart, which Blender's
    importer puts at frames 0 and 0.00024, and the clip's range snaps to the single frame 0."""
    times = np.array([0.0, 1e-5])
    half = np.radians([0.0, 30.0]) / 2
    bend = np.column_stack([np.zeros((2, 2)), np.sin(half), np.cos(half)])
    return _write(folder, "single-frame.glb", _chains_glb(channels=lambda joints: [
        Channel(j, "rotation", times, bend) for j in joints[1:]
    ]))


def truncated_glb(folder: Path) -> Path:
    """The first half of a valid file."""
    data = generate_rig_bytes("arm", 0)
    return _write(folder, "truncated.glb", data[: len(data) // 2])


def zero_bytes(folder: Path, name: str = "empty.glb") -> Path:
    return _write(folder, name, b"")


def random_bytes(folder: Path, size: int = 4096, seed: int = 0, name: str = "random.glb") -> Path:
    return _write(folder, name, np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())


def hanging_asset(folder: Path, name: str = "hanging.glb") -> Path:
    """A named pipe with an asset's name: opening it for reading blocks until a writer comes, which
    never happens, so a probe without a hard timeout hangs for real."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    os.mkfifo(path)
    return path


def _write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def _chains_glb(
    n_chains: int = 1,
    skinned: bool = True,
    weight_scale: float = 1.0,
    nan_vertices: int = 0,
    nan_keys_from: int | None = None,
    channels: Callable[[list[int]], list[Channel]] | None = None,
) -> bytes:
    """Chains of CHAIN_BONES upright bones side by side (skinned), or one plain tube (not skinned),
    swinging about Z over a 2 s clip; ``channels``, given a chain's joint nodes, replaces the swing."""
    builder = GlbBuilder(generator="kinematicparts tests/factories")
    material = builder.add_material("body", (0.6, 0.6, 0.6, 1.0))
    times = np.linspace(0.0, 2.0, 25)
    angles = np.radians(40.0) * np.sin(np.pi * times)
    swing = np.column_stack([np.zeros((len(times), 2)), np.sin(angles / 2), np.cos(angles / 2)])
    if nan_keys_from is not None:
        swing[nan_keys_from:] = np.nan
    animated = []
    for chain in range(n_chains):
        prefix = "ab"[chain]
        x = 0.5 * chain
        heads = np.array([[x, BONE_LENGTH * i, 0.0] for i in range(CHAIN_BONES + 1)])
        tube = tube_mesh(Tube(heads, tuple(range(CHAIN_BONES)), (0.08,) * (CHAIN_BONES + 1)))
        positions = tube.positions.copy()
        positions[:nan_vertices] = np.nan
        if not skinned:
            mesh = builder.add_mesh("plain", positions, tube.triangles, tube.normals, material=material)
            node = builder.add_node("plain", mesh=mesh)
            animated.append(Channel(node, "rotation", times, swing))
            continue
        # Blender makes one armature per deepest common ancestor of a skin's joints: a group node
        # per chain keeps the two skins apart (at the scene root they would share one armature)
        group = builder.add_node(f"rig_{prefix}")
        joints = []
        for i, head in enumerate(heads[:-1]):
            parent = joints[-1] if joints else group
            offset = head - heads[i - 1] if i else head
            joints.append(builder.add_node(f"{prefix}_{i + 1}", parent=parent, translation=offset))
        inverse_bind = np.tile(np.eye(4), (CHAIN_BONES, 1, 1))
        inverse_bind[:, :3, 3] = -heads[:-1]
        skin = builder.add_skin(f"armature_{prefix}", joints, inverse_bind)
        weights = tube.weights * weight_scale
        mesh = builder.add_mesh(
            f"body_{prefix}", positions, tube.triangles, tube.normals, tube.joints, weights, material
        )
        builder.add_node(f"body_{prefix}", parent=group, mesh=mesh, skin=skin)
        animated += channels(joints) if channels else [Channel(j, "rotation", times, swing) for j in joints[1:]]
    builder.add_animation("swing", animated)
    return builder.to_bytes()
