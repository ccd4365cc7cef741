"""Animation clips: the actions of a scene, their frame ranges, and playing exactly one of them.

Blender 5 actions are layered and bind to IDs through slots; an imported glTF animation is one action
whose slots name the objects it drives, and the importer also stacks every action as a muted NLA
track. A clip is therefore an action plus the (ID, slot) pairs it drives. The importers do not set the
scene frame range, so a clip's range comes from its action.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import bpy

from pipelines.build.blender.errors import RenderError
from schemas.assets import RejectReason


@dataclass(frozen=True)
class Clip:
    name: str
    frame_start: float
    frame_end: float
    fps: float
    targets: tuple[tuple[bpy.types.ID, bpy.types.ActionSlot], ...]


def scene_fps() -> float:
    render = bpy.context.scene.render
    return render.fps / render.fps_base


def list_clips() -> list[Clip]:
    """Every action that drives something in the scene, sorted by name."""
    animatable = _animatable_ids()
    clips = []
    for action in bpy.data.actions:
        targets = _targets(action, animatable)
        if not targets:
            continue
        start, end = (_snap(x) for x in action.frame_range)
        clips.append(Clip(action.name, start, end, scene_fps(), tuple(targets)))
    return sorted(clips, key=lambda c: c.name)


def find_clip(name: str) -> Clip:
    clips = list_clips()
    for clip in clips:
        if clip.name == name:
            return clip
    raise RenderError(RejectReason.clip_not_found, f"no clip {name!r}; clips are {[c.name for c in clips]}")


def play(clip: Clip) -> None:
    """Make ``clip`` the only animation evaluated: every other action and NLA stack is switched off."""
    for id_ in _animatable_ids():
        data = id_.animation_data
        if data is not None:
            data.use_nla = False
            data.action = None
    for id_, slot in clip.targets:
        data = id_.animation_data or id_.animation_data_create()
        data.action = bpy.data.actions[clip.name]
        data.action_slot = slot


@contextmanager
def held_pose() -> Iterator[None]:
    """Keep the scene in the pose of its current frame with every action detached, then attach them
    again. The render operator re-evaluates everything time-dependent before each image, so with an
    action attached every view re-deforms the mesh and Cycles re-syncs it and rebuilds its BVH; the
    frame's evaluation has already written the pose to the bones and objects themselves, so without
    the action they stay put and only the camera changes."""
    attached = [(data, data.action, data.action_slot) for id_ in _animatable_ids()
                if (data := id_.animation_data) is not None and data.action is not None]
    for data, _, _ in attached:
        data.action = None
    try:
        yield
    finally:
        for data, action, slot in attached:
            data.action = action
            data.action_slot = slot


def key_times(clip: Clip) -> list[float]:
    """Every keyframe time of the clip's action (all layers, strips and slots), sorted, unique."""
    action = bpy.data.actions[clip.name]
    times: set[float] = set()
    for layer in action.layers:
        for strip in layer.strips:
            for bag in getattr(strip, "channelbags", ()):
                for curve in bag.fcurves:
                    times.update(float(key.co.x) for key in curve.keyframe_points)
    return sorted(times)


def _snap(frame: float) -> float:
    """Importers convert key times to frames in float32: 0.9999989 means frame 1."""
    nearest = round(frame)
    return float(nearest) if abs(frame - nearest) < 1e-3 else float(frame)


def _animatable_ids() -> list[bpy.types.ID]:
    ids: list[bpy.types.ID] = []
    for obj in bpy.context.scene.objects:
        ids.append(obj)
        keys = getattr(obj.data, "shape_keys", None)
        if keys is not None:
            ids.append(keys)
    return ids


def _targets(action: bpy.types.Action, animatable: list[bpy.types.ID]) -> list[tuple[bpy.types.ID, bpy.types.ActionSlot]]:
    """IDs that use the action (directly or in an NLA strip), else IDs its slots were made for."""
    found: dict[int, tuple[bpy.types.ID, bpy.types.ActionSlot]] = {}
    for id_ in animatable:
        data = id_.animation_data
        if data is None:
            continue
        if data.action == action and data.action_slot is not None:
            found[id_.as_pointer()] = (id_, data.action_slot)
        for track in data.nla_tracks:
            for strip in track.strips:
                if strip.action == action and strip.action_slot is not None:
                    found.setdefault(id_.as_pointer(), (id_, strip.action_slot))
    by_slot_name = {(id_.id_type, id_.name): id_ for id_ in animatable}
    for slot in action.slots:
        id_ = by_slot_name.get((slot.target_id_type, slot.name_display))
        if id_ is not None and id_.as_pointer() not in found:
            found[id_.as_pointer()] = (id_, slot)
    return list(found.values())
