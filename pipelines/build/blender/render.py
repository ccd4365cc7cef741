"""Render one clip of the loaded asset on the view x frame grid: RGB, exact part ids, alpha.

One Cycles render per grid cell yields everything: the RGB image from the Combined pass, and the part
ids from the Material Index pass, which Cycles writes from the first sample without blending (see
:mod:`pipelines.build.blender.materials`). Alpha is that pass's foreground, so alpha and the part map agree
pixel for pixel. Both passes are read from an uncompressed EXR (:mod:`pipelines.build.blender.exr`).

RGB: Cycles radiance (scene-linear Rec.709, premultiplied) composited over a white background in
linear light, then encoded with the sRGB transfer function (Blender's "Standard" view, no tone
mapping, no dithering) and rounded to uint8.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import bpy
import mathutils
import numpy as np
from PIL import Image

from pipelines.build.blender import clips as clip_ops
from pipelines.build.blender import scene
from pipelines.build.blender.cameras import blender_matrix_world, fit_distance, orbit_cameras, orbit_position
from pipelines.build.blender.errors import RenderError
from pipelines.build.blender.exr import read_exr
from pipelines.build.blender.materials import assign_part_materials, face_parts, flat_part_material
from pipelines.build.blender.rig import decide_clip_parts, grid_frames, scene_rig
from pipelines.build.blender.session import BlenderSession
from pipelines.build.colour import decode_part_image, encode_part_image
from pipelines.build.parts import vertex_parts
from schemas.assets import RejectReason
from schemas.parts import PartMap
from schemas.render import Camera, RenderSpec, Sampling

CAMERA_NAME = "kp_camera"
BACKGROUND_LINEAR = 1.0  # white
WORLD_LIGHT = 0.6  # uniform environment light, linear
SUN_STRENGTH = 2.5
SUN_DIRECTION = (-40.0, 55.0)  # (azimuth, elevation) in degrees the sunlight comes from
_COMBINED = "ViewLayer.Combined.{}"
_INDEX = "ViewLayer.Material Index.X"

Progress = Callable[[int, int], None]


@dataclass
class RenderedGrid:
    """A clip on the grid. Arrays are [views, frames, H, W(, C)]; ``part_ids`` are -1 on background."""

    clip: str
    fps: float
    rgb: np.ndarray
    part_ids: np.ndarray
    parts: np.ndarray
    alpha: np.ndarray
    cameras: list[Camera]
    frame_times: list[float]
    part_map: PartMap
    normalisation_scale: float
    normalisation_offset: list[float]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_renders(self) -> int:
        return self.rgb.shape[0] * self.rgb.shape[1]


def elevation_for(spec: RenderSpec, seed: int) -> float:
    """The spec's fixed elevation, or a seeded draw from its range (one per object)."""
    if spec.elevation_range_deg is None:
        return spec.elevation_deg
    low, high = spec.elevation_range_deg
    return float(np.random.default_rng(seed).uniform(low, high))


def render_grid(
    session: BlenderSession,
    clip: str,
    spec: RenderSpec,
    seed: int,
    progress: Progress | None = None,
    parts: PartMap | None = None,
) -> RenderedGrid:
    """Render ``clip`` of the asset loaded in ``session``. Raises :class:`RenderError` or
    :class:`~pipelines.build.parts.PartsError` (both with a reason code) for assets that cannot be rendered.

    ``parts`` is the clip's part map when it is already decided (stored for this asset, clip, part
    rules and code version); otherwise it is decided here from the whole clip. Either way the grid
    does not enter into it; the map used is the grid's ``part_map``. Leaves the scene modified: reset
    the session before the next asset."""
    if spec.engine != "CYCLES":
        # EEVEE aborts the whole process, uncatchably, where no EGL is found, and has no
        # material-index pass; only Cycles is safe inside a long-lived worker.
        raise RenderError(RejectReason.render_failed, f"engine {spec.engine} is not supported; use CYCLES")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with session.capture():
        chosen = clip_ops.find_clip(clip)
        clip_ops.play(chosen)
        rig = scene_rig(chosen)
        part_map = parts if parts is not None else decide_clip_parts(rig, chosen, spec.parts, spec.colours)
        timings["parts"] = time.perf_counter() - started
        vertex_part = vertex_parts(part_map, rig.skeleton.names, rig.vertex_bone)
        grid = grid_frames(rig, chosen, spec.n_frames, spec.motion_threshold)
        copies: dict = {}
        for obj, rows in zip(rig.meshes, rig.vertex_ranges):
            assign_part_materials(obj, face_parts(obj, vertex_part[rows], part_map.n_parts), copies)
        _hide_everything_but(rig.meshes)
        elevation = elevation_for(spec, seed)
        distance = spec.camera_distance
        if spec.frame_fill is not None:
            distance = fit_distance(grid.positions, spec.n_views, elevation, spec.fov_deg, spec.frame_fill)
        cameras = orbit_cameras(spec.n_views, elevation, distance, spec.fov_deg, spec.resolution)
        scale, offset = grid.scale, grid.offset
        _setup_scene(spec, session.threads, scale, distance)
        timings["prepare"] = time.perf_counter() - started
        rgb, part_ids, seconds = _render_cells(cameras, grid.frames, scale, offset, spec.resolution, progress)
    if part_ids.max() >= part_map.n_parts:
        raise RenderError(RejectReason.render_failed, f"part id {int(part_ids.max())} beyond {part_map.n_parts} parts")
    timings.update(seconds, total=time.perf_counter() - started)
    return RenderedGrid(
        clip=clip,
        fps=chosen.fps,
        rgb=rgb,
        part_ids=part_ids,
        parts=encode_part_image(part_ids, np.asarray(part_map.palette, np.uint8)),
        alpha=np.where(part_ids >= 0, 255, 0).astype(np.uint8),
        cameras=cameras,
        frame_times=[float(f) for f in grid.frames],
        part_map=part_map,
        normalisation_scale=scale,
        normalisation_offset=[float(x) for x in offset],
        timings=timings,
    )


def each_cell(cameras: list[Camera], frames: list[float], scale: float, offset: np.ndarray) -> Iterator[tuple[int, int]]:
    """Put the scene at each grid cell in turn, frames outermost, and yield (view, frame index).
    Within a frame the pose is held (:func:`clips.held_pose`): a view change re-syncs only the camera."""
    camera = bpy.data.objects[CAMERA_NAME]
    for f, frame in enumerate(frames):
        scene.set_frame(frame)
        with clip_ops.held_pose():
            for v, cam in enumerate(cameras):
                camera.matrix_world = mathutils.Matrix(blender_matrix_world(cam, scale, offset))
                yield v, f


def _render_cells(
    cameras: list[Camera], frames: list[float], scale: float, offset: np.ndarray, resolution: int,
    progress: Progress | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    shape = (len(cameras), len(frames), resolution, resolution)
    rgb = np.zeros(shape + (3,), np.uint8)
    part_ids = np.full(shape, -1, np.int16)
    seconds = {"render": 0.0, "read": 0.0}
    with tempfile.TemporaryDirectory(prefix="kp20k-render-") as tmp:
        output = Path(tmp) / "cell.exr"
        bpy.context.scene.render.filepath = str(output)
        for done, (v, f) in enumerate(each_cell(cameras, frames, scale, offset), start=1):
            tick = time.perf_counter()
            _render_still()
            tock = time.perf_counter()
            rgb[v, f], part_ids[v, f] = _decode_cell(read_exr(output))
            seconds["render"] += tock - tick
            seconds["read"] += time.perf_counter() - tock
            if progress is not None:
                progress(done, len(cameras) * len(frames))
    return rgb, part_ids, seconds


def render_flat_part_ids(session: BlenderSession, grid: RenderedGrid) -> np.ndarray:
    """Re-render ``grid``'s part maps with the flat recipe and decode them: emission of each part's
    palette colour, Raw view, no dither, 1 sample, box filter 0.01 px (the pixel centre), no bounces,
    8-bit PNG. An independent check of the Material Index pass (and what the part maps would cost as
    a second pass). Call right after :func:`render_grid`, on the same loaded scene; leaves it flat."""
    sc = bpy.context.scene
    palette = np.asarray(grid.part_map.palette, np.uint8)
    with session.capture():
        bpy.context.view_layer.material_override = flat_part_material(palette)
        cycles = sc.cycles
        cycles.samples = 1
        cycles.use_denoising = False
        cycles.use_adaptive_sampling = False
        cycles.pixel_filter_type = "BOX"
        cycles.filter_width = 0.01
        for bounces in ("max_bounces", "diffuse_bounces", "glossy_bounces", "transmission_bounces",
                        "volume_bounces", "transparent_max_bounces"):
            setattr(cycles, bounces, 0)
        sc.view_settings.view_transform = "Raw"
        sc.view_settings.look = "None"
        sc.view_settings.exposure = 0.0
        sc.view_settings.gamma = 1.0
        sc.render.dither_intensity = 0.0
        settings = sc.render.image_settings
        settings.media_type = "IMAGE"
        settings.file_format = "PNG"
        settings.color_mode = "RGBA"
        settings.color_depth = "8"
        ids = np.full(grid.part_ids.shape, -1, np.int16)
        offset = np.asarray(grid.normalisation_offset)
        with tempfile.TemporaryDirectory(prefix="kp20k-flat-") as tmp:
            output = Path(tmp) / "cell.png"
            sc.render.filepath = str(output)
            for v, f in each_cell(grid.cameras, grid.frame_times, grid.normalisation_scale, offset):
                _render_still()
                rgba = np.asarray(Image.open(output).convert("RGBA"))
                ids[v, f] = decode_part_image(rgba[..., :3], palette, alpha=rgba[..., 3])
    return ids


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Scene-linear [0, 1] -> uint8 with the sRGB transfer function (values outside are clipped)."""
    linear = np.clip(linear, 0.0, 1.0)
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return np.rint(encoded * 255.0).astype(np.uint8)


def _decode_cell(channels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    premultiplied = np.stack([channels[_COMBINED.format(c)] for c in "RGB"], axis=-1).astype(np.float64)
    coverage = channels[_COMBINED.format("A")].astype(np.float64)[..., None]
    rgb = srgb_encode(premultiplied + (1.0 - coverage) * BACKGROUND_LINEAR)
    part_ids = np.rint(channels[_INDEX]).astype(np.int16) - 1
    return rgb, part_ids


def _render_still() -> None:
    try:
        result = bpy.ops.render.render(write_still=True)
    except RuntimeError as exc:
        raise RenderError(RejectReason.render_failed, f"Cycles failed: {exc}") from exc
    if "FINISHED" not in result:
        raise RenderError(RejectReason.render_failed, f"render returned {sorted(result)}")


def _hide_everything_but(meshes: list[bpy.types.Object]) -> None:
    """Only the rig's meshes render: no scenery, no lights or cameras of the asset."""
    keep = {m.as_pointer() for m in meshes}
    for obj in bpy.context.scene.objects:
        renders = obj.type in ("MESH", "LIGHT") or obj.type in scene.NON_MESH_RENDERABLES
        if renders and obj.as_pointer() not in keep:
            obj.hide_render = True


def _setup_scene(spec: RenderSpec, threads: int, scale: float, distance: float) -> None:
    sc = bpy.context.scene
    render = sc.render
    render.engine = "CYCLES"
    render.resolution_x = render.resolution_y = spec.resolution
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.film_transparent = True
    render.use_persistent_data = True  # between views only the camera moves: no scene re-sync
    render.use_compositing = False
    render.use_sequencer = False
    render.use_motion_blur = False
    render.use_single_layer = True
    render.threads_mode = "FIXED" if threads else "AUTO"
    if threads:
        render.threads = threads
    cycles = sc.cycles
    cycles.device = spec.device
    if spec.device == "GPU":
        _enable_gpu()
    cycles.seed = spec.seed
    apply_sampling(cycles, spec.sampling(), spec.denoise)
    view_layer = bpy.context.view_layer
    view_layer.use_pass_combined = True
    view_layer.use_pass_material_index = True
    settings = render.image_settings
    settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.color_depth = "32"
    settings.exr_codec = "NONE"
    settings.use_exr_interleave = True  # one part: the layout exr.read_exr reads

    world = bpy.data.worlds.new("kp_world")  # Blender 5 gives new worlds a Background node
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (WORLD_LIGHT, WORLD_LIGHT, WORLD_LIGHT, 1.0)
    sc.world = world
    sun = bpy.data.objects.new("kp_sun", bpy.data.lights.new("kp_sun", "SUN"))
    sun.data.energy = SUN_STRENGTH
    towards_light = orbit_position(*SUN_DIRECTION, 1.0)
    sun.rotation_euler = mathutils.Vector(towards_light).to_track_quat("Z", "Y").to_euler()
    sc.collection.objects.link(sun)

    camera = bpy.data.objects.new(CAMERA_NAME, bpy.data.cameras.new(CAMERA_NAME))
    camera.data.sensor_fit = "HORIZONTAL"
    camera.data.angle = math.radians(spec.fov_deg)
    # Clip planes in the asset's own units: the object lies within 0.87 (normalised) of the origin.
    camera.data.clip_start = 0.01 / scale
    camera.data.clip_end = (distance + 2.0) / scale
    sc.collection.objects.link(camera)
    sc.camera = camera


def apply_sampling(cycles: "bpy.types.CyclesRenderSettings", sampling: Sampling, denoise: bool) -> None:
    """Set Cycles' sampling, denoiser and light paths from ``sampling`` (a preset's recipe)."""
    cycles.samples = sampling.samples
    cycles.use_adaptive_sampling = sampling.adaptive_threshold > 0
    cycles.adaptive_threshold = sampling.adaptive_threshold
    cycles.use_denoising = denoise
    cycles.denoiser = "OPENIMAGEDENOISE"
    cycles.denoising_quality = sampling.denoising_quality
    cycles.denoising_prefilter = sampling.denoising_prefilter
    for bounces in ("max_bounces", "diffuse_bounces", "glossy_bounces", "transmission_bounces", "transparent_max_bounces"):
        setattr(cycles, bounces, getattr(sampling, bounces))


def _enable_gpu() -> None:
    preferences = bpy.context.preferences.addons["cycles"].preferences
    for backend in ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"):
        try:
            preferences.compute_device_type = backend
        except TypeError:
            continue
        preferences.get_devices()
        gpus = [d for d in preferences.devices if d.type == backend]
        if gpus:
            for device in preferences.devices:
                device.use = device.type == backend
            return
    raise RenderError(RejectReason.render_failed, "RenderSpec asks for a GPU but Cycles found none")
