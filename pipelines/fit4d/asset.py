"""The fitted asset on disk, and rendering it from any camera at any time.

A folder (written whole, then renamed in; an existing folder is replaced only when it is a previous
fit, marked by ``.kp20k-fit4d``):

    gaussians.safetensors   the parameters (schemas.fit4d.TENSOR_DOC says what each tensor holds)
    asset.json              schemas.fit4d.FitRecord: cameras (OpenCV), palette and part names, knot
                            times and time range, trained views and frames, settings, losses, timings
    turntable.gif           the asset turning once while the clip plays: RGB left, parts right
    contact_sheet.png       per source view: fitted RGB, true RGB, fitted parts, true parts; frames
                            left to right, held-out views and frames marked with *
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipelines.build.blender.cameras import orbit_cameras
from pipelines.contact_sheet import contact_sheet
from pipelines.files import FolderRefused, folder_swapped_in, replace_problem
from pipelines.fit4d.fit import FitResult, torch_threads
from pipelines.fit4d.gaussians import DynamicGaussians
from pipelines.fit4d.splat import render
from pipelines.fit4d.target import FitTarget
from pipelines.version import code_version
from schemas.fit4d import FitConfig, FitRecord
from schemas.render import Camera

MARKER = ".kp20k-fit4d"
FITTED = "fitted asset"  # what an output folder holds, in messages
TURNTABLE_STEPS = 24
TURNTABLE_MS = 125  # per turntable frame: 3 s a turn


class AssetFolderError(FolderRefused):
    """``--out`` names something a fit must not replace, or a folder that is not a fitted asset."""


@dataclass
class Renders:
    rgb: np.ndarray  # uint8 [V, T, H, W, 3] over the background
    parts: np.ndarray  # uint8 [V, T, H, W, 3]: palette colours, black background
    alpha: np.ndarray  # float32 [V, T, H, W]


@torch.no_grad()
def render_grid(model: DynamicGaussians, cameras: list[Camera], times: list[float], palette: np.ndarray,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0), backend: str = "torch") -> Renders:
    """Every camera at every time. A pixel's part is the most probable composited part where the
    coverage is at least one half, drawn in its palette colour (so the maps decode exactly)."""
    device = model.means.device
    n_parts = model.n_parts
    fill = torch.cat([torch.tensor(background, dtype=torch.float32), torch.zeros(n_parts)]).to(device)
    colours = np.vstack([np.asarray(palette, np.uint8).reshape(-1, 3), np.zeros((1, 3), np.uint8)])
    rgb, parts, alpha = [], [], []
    for camera in cameras:
        extrinsics = torch.tensor(camera.extrinsics, dtype=torch.float32, device=device)
        intrinsics = torch.tensor(camera.intrinsics, dtype=torch.float32, device=device)
        row = [render(model.at(t), extrinsics, intrinsics, camera.height, camera.width, fill, backend) for t in times]
        rgb.append([(image[..., :3].clamp(0, 1) * 255).round().byte().cpu().numpy() for image, _ in row])
        labels = [torch.where(cover >= 0.5, image[..., 3:].argmax(-1), n_parts).cpu().numpy() for image, cover in row]
        parts.append([colours[label] for label in labels])
        alpha.append([cover.cpu().numpy() for _, cover in row])
    return Renders(np.asarray(rgb), np.asarray(parts), np.asarray(alpha, dtype=np.float32))


def record_of(result: FitResult, target: FitTarget, config: FitConfig) -> FitRecord:
    times = [target.frame_times[f] for f in result.train_frames]
    return FitRecord(
        source=target.source, sample_id=target.sample_id, clip=target.clip, fps=target.fps, knot_times=times,
        time_range=(min(times), max(times)), frame_times=target.frame_times,
        reference_frame_time=target.frame_times[result.reference_frame], cameras=target.cameras,
        train_views=result.train_views, train_frames=result.train_frames, part_map=target.part_map,
        background=[1.0, 1.0, 1.0], n_gaussians=int(result.model.means.shape[0]), config=config,
        renderer=result.renderer, fit_seconds=result.seconds, final_losses=result.losses, code_version=code_version(),
    )


def write_asset(out: Path | str, result: FitResult, target: FitTarget, config: FitConfig) -> FitRecord:
    """Write the folder beside ``out`` and swap it in: a crash never leaves a folder that looks done."""
    record = record_of(result, target, config)
    with folder_swapped_in(out, MARKER, FITTED, AssetFolderError) as staging:
        save_file(result.model.tensors(), str(staging / "gaussians.safetensors"))
        (staging / "asset.json").write_text(record.model_dump_json(indent=2))
        with torch_threads(config.threads):
            write_turntable(staging / "turntable.gif", result.model, record)
            sheet(result.model, record, target).save(staging / "contact_sheet.png")
    return record


def load_asset(folder: Path | str, device: str = "cpu") -> tuple[DynamicGaussians, FitRecord]:
    folder = Path(folder)
    if not (folder / "asset.json").is_file() or not (folder / "gaussians.safetensors").is_file():
        raise AssetFolderError(f"{folder} is not a fitted asset (asset.json and gaussians.safetensors expected)")
    record = FitRecord.model_validate_json((folder / "asset.json").read_text())
    tensors = load_file(str(folder / "gaussians.safetensors"))
    model = DynamicGaussians(tensors, record.knot_times, record.knot_times.index(record.reference_frame_time))
    return model.to(device).eval(), record


def turntable_cameras(record: FitRecord, n: int = TURNTABLE_STEPS) -> list[Camera]:
    """The source orbit (elevation, distance, field of view, size of view 0), at ``n`` azimuths."""
    first = record.cameras[0]
    return orbit_cameras(n, first.elevation_deg, first.distance, first.fov_deg, first.width)


def write_turntable(path: Path, model: DynamicGaussians, record: FitRecord, n: int = TURNTABLE_STEPS) -> None:
    low, high = record.time_range
    times = np.linspace(low, high, n).tolist()
    palette = np.asarray(record.part_map.palette, np.uint8)
    frames = []
    for i, camera in enumerate(turntable_cameras(record, n)):
        one = render_grid(model, [camera], [times[i]], palette, tuple(record.background), "torch")
        frames.append(Image.fromarray(np.concatenate([one.rgb[0, 0], one.parts[0, 0]], axis=1)))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=TURNTABLE_MS, loop=0)


def sheet(model: DynamicGaussians, record: FitRecord, target: FitTarget) -> Image.Image:
    fitted = render_grid(model, record.cameras, record.frame_times, np.asarray(record.part_map.palette, np.uint8),
                         tuple(record.background), "torch")
    rows = []
    for v in range(len(record.cameras)):
        mark = "" if v in record.train_views else "*"
        rows += [(f"v{v}{mark} fit", list(fitted.rgb[v])), (f"v{v}{mark} true", list((target.rgb[v] * 255).round().astype(np.uint8))),
                 (f"v{v}{mark} fit parts", list(fitted.parts[v])), (f"v{v}{mark} true parts", list(target.parts_rgb[v]))]
    labels = [f"f{f}{'' if f in record.train_frames else '*'}" for f in range(len(record.frame_times))]
    return contact_sheet(rows, column_labels=labels)


def out_problem(out: Path) -> str | None:
    """Why ``out`` may not be replaced by a fit, or None (absent, or a previous fit)."""
    return replace_problem(out, MARKER, FITTED)
