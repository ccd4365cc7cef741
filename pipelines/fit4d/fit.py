"""Stage 1 of SV4D 2.0's 4D optimisation, with parts: fit a :class:`DynamicGaussians` to a sample's
trained views and frames.

Schedule (progressive frame sampling): the canonical shape is fitted on the reference frame alone for
``static_fraction`` of the steps; then the other trained frames join one at a time, nearest in time
first, each new knot starting from the motion of its nearest fitted neighbour; every frame fitted
after its arrival keeps being sampled. Each step renders ``batch`` (view, frame) cells drawn from the
active frames (always one of the newest frame) and minimises, per cell, with the view's visibility
weight: L1(RGB) + alpha_weight L1(alpha) + part_weight CE(parts | foreground) + centroid_weight times
the distance between each part's rendered and true image centroids (a long-range pull on the part
motions, which the photometric terms cannot see once a part has left its old pixels), plus rigidity_weight
times the cross-entropy of the skinning weights against the primitive's own part (kinematic parts
move rigidly).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from pipelines.fit4d.gaussians import DynamicGaussians, initial_tensors, visual_hull
from pipelines.fit4d.splat import backend_for, render
from pipelines.fit4d.target import FitTarget, TargetError
from schemas.fit4d import FitConfig

Progress = Callable[[int, int, dict[str, float]], None]
FINAL_LR_SHARE = 0.1  # every learning rate decays exponentially to this share of its start
LOG_EVERY = 25


@dataclass
class FitResult:
    model: DynamicGaussians
    train_views: list[int]
    train_frames: list[int]  # in time order
    reference_frame: int
    renderer: str
    seconds: float
    losses: dict[str, float]  # means over the last LOG_EVERY steps


def cells(target: FitTarget, config: FitConfig) -> tuple[list[int], list[int], int]:
    """(trained views, trained frames in time order, reference frame), checked against the grid."""
    views = sorted(config.train_views) if config.train_views is not None else list(range(target.n_views))
    frames = config.train_frames if config.train_frames is not None else list(range(target.n_frames))
    if max(views) >= target.n_views or max(frames) >= target.n_frames:
        raise TargetError(f"{target.source} has {target.n_views} views and {target.n_frames} frames; "
                          f"train_views {views} / train_frames {frames} point outside")
    frames = sorted(frames, key=lambda f: target.frame_times[f])
    reference = frames[0] if config.reference_frame is None else config.reference_frame
    if reference not in frames:
        raise TargetError(f"reference_frame {reference} is not one of the trained frames {frames}")
    return views, frames, reference


def view_weights(target: FitTarget, views: list[int], falloff: float) -> dict[int, float]:
    """Visibility weight per view: 1 at the input view (view 0's azimuth), 1 - falloff opposite it."""
    origin = target.cameras[0].azimuth_deg
    return {v: 1.0 - falloff * (1.0 - math.cos(math.radians(target.cameras[v].azimuth_deg - origin))) / 2.0
            for v in views}


def camera_tensors(target: FitTarget, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    extrinsics = torch.tensor([c.extrinsics for c in target.cameras], dtype=torch.float32, device=device)
    intrinsics = torch.tensor([c.intrinsics for c in target.cameras], dtype=torch.float32, device=device)
    return extrinsics, intrinsics


def frame_schedule(frames: list[int], reference: int, times: list[float], config: FitConfig) -> list[tuple[int, int]]:
    """(step at which the frame joins, frame) for every trained frame, the reference at step 0."""
    others = sorted((f for f in frames if f != reference), key=lambda f: (abs(times[f] - times[reference]), times[f]))
    static = round(config.static_fraction * config.steps) if others else 0
    if not config.progressive:
        return [(0, reference)] + [(static, f) for f in others]
    share = (config.steps - static) / (len(others) + 1)
    return [(0, reference)] + [(static + round(i * share), f) for i, f in enumerate(others)]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` for the block (restored after)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit(target: FitTarget, config: FitConfig, progress: Progress | None = None) -> FitResult:
    with torch_threads(config.threads):
        return _fit(target, config, progress)


def _fit(target: FitTarget, config: FitConfig, progress: Progress | None) -> FitResult:
    started = time.perf_counter()
    views, frames, reference = cells(target, config)
    device = torch.device(config.device)
    backend = backend_for(config.renderer, device)
    generator = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    extrinsics, intrinsics = camera_tensors(target, device)
    cams = [{"E": np.asarray(target.cameras[v].extrinsics), "K": np.asarray(target.cameras[v].intrinsics)} for v in views]
    n_parts = target.part_map.n_parts
    points, volume = visual_hull(cams, target.alpha[views, reference], config.n_gaussians, generator)
    tensors = initial_tensors(points, volume, cams, target.rgb[views, reference], target.part_ids[views, reference],
                              n_parts, len(frames))
    model = DynamicGaussians(tensors, [target.frame_times[f] for f in frames], frames.index(reference)).to(device)
    optimiser = torch.optim.Adam([
        {"params": [model.means], "lr": config.lr_means},
        {"params": [model.log_scales, model.quats, model.opacity_logits, model.colour_logits, model.part_logits],
         "lr": config.lr_appearance},
        {"params": [model.rotations, model.translations, model.skin_logits], "lr": config.lr_motion},
    ])
    decay = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: FINAL_LR_SHARE ** (s / max(config.steps, 1)))
    rgb = torch.from_numpy(target.rgb).to(device)
    alpha = torch.from_numpy(target.alpha).to(device)
    part_ids = torch.from_numpy(target.part_ids).to(device)
    weights = view_weights(target, views, config.visibility_falloff)
    background = torch.cat([torch.ones(3), torch.zeros(n_parts)]).to(device)
    height, width = target.rgb.shape[2:4]
    schedule = frame_schedule(frames, reference, target.frame_times, config)
    history: dict[str, list[float]] = {"rgb": [], "alpha": [], "parts": [], "centroid": [], "rigidity": [], "total": []}
    active: list[int] = []
    for step in range(config.steps):
        for start, frame in schedule:
            if start == step:
                _join(model, frames, active, frame, target.frame_times)
                active.append(frame)
        newest = active[-1]
        batch = [(int(generator.choice(views)), newest)] + [
            (int(generator.choice(views)), int(generator.choice(active))) for _ in range(config.batch - 1)]
        terms = {"rgb": 0.0, "alpha": 0.0, "parts": 0.0, "centroid": 0.0}
        loss = torch.zeros((), device=device)
        for view, frame in batch:
            image, coverage = render(model.at(target.frame_times[frame]), extrinsics[view], intrinsics[view],
                                     height, width, background, backend)
            rgb_loss = (image[..., :3] - rgb[view, frame]).abs().mean()
            alpha_loss = (coverage - alpha[view, frame]).abs().mean()
            part_loss = _part_loss(image[..., 3:], coverage, part_ids[view, frame])
            centroid_loss = _centroid_loss(image[..., 3:], part_ids[view, frame], n_parts)
            loss = loss + weights[view] * (rgb_loss + config.alpha_weight * alpha_loss + config.part_weight * part_loss
                                           + config.centroid_weight * centroid_loss)
            for name, value in (("rgb", rgb_loss), ("alpha", alpha_loss), ("parts", part_loss), ("centroid", centroid_loss)):
                terms[name] += float(value.detach()) / len(batch)
        loss = loss / len(batch)
        rigidity = -(torch.softmax(model.part_logits, 1).detach() * torch.log_softmax(model.skin_logits, 1)).sum(1).mean()
        loss = loss + config.rigidity_weight * rigidity
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        for name, value in (*terms.items(), ("rigidity", float(rigidity.detach())), ("total", float(loss.detach()))):
            history[name].append(value)
        if progress is not None and ((step + 1) % LOG_EVERY == 0 or step + 1 == config.steps):
            progress(step + 1, config.steps, {k: float(np.mean(v[-LOG_EVERY:])) for k, v in history.items()})
    losses = {k: float(np.mean(v[-LOG_EVERY:])) for k, v in history.items()}
    return FitResult(model.eval(), views, frames, reference, backend, time.perf_counter() - started, losses)


def _part_loss(probabilities: torch.Tensor, coverage: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the composited part distribution (normalised by coverage) on labelled pixels."""
    labelled = ids >= 0
    if not bool(labelled.any()):
        return torch.zeros((), device=ids.device)
    chosen = probabilities[labelled].gather(1, ids[labelled][:, None])[:, 0]
    return -(torch.log(chosen.clamp(min=1e-6)) - torch.log(coverage[labelled].clamp(min=1e-6))).mean()


def _centroid_loss(probabilities: torch.Tensor, ids: torch.Tensor, n_parts: int) -> torch.Tensor:
    """Mean distance (in image widths) between each part's rendered and true image centroid, over the
    parts seen in the true map: a pull that reaches a part however far it has moved, where the
    photometric terms only see overlapping pixels."""
    height, width = ids.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=ids.device, dtype=probabilities.dtype),
                            torch.arange(width, device=ids.device, dtype=probabilities.dtype), indexing="ij")
    true = torch.nn.functional.one_hot(ids.clamp(min=0), n_parts).to(probabilities.dtype) * (ids >= 0)[..., None]
    seen = true.sum((0, 1)) > 0
    if not bool(seen.any()):
        return torch.zeros((), device=ids.device)

    def centroids(mass: torch.Tensor) -> torch.Tensor:
        total = mass.sum((0, 1)).clamp(min=1e-6)
        return torch.stack([(mass * xs[..., None]).sum((0, 1)) / total, (mass * ys[..., None]).sum((0, 1)) / total], -1)

    return (centroids(probabilities) - centroids(true))[seen].norm(dim=-1).mean() / width


@torch.no_grad()
def _join(model: DynamicGaussians, frames: list[int], active: list[int], frame: int, times: list[float]) -> None:
    """A frame joins the fit: its knot starts from the motion of the nearest frame already fitted."""
    if not active:
        return
    nearest = min(active, key=lambda f: abs(times[f] - times[frame]))
    knot, source = frames.index(frame), frames.index(nearest)
    if knot != model.reference_knot:
        model.rotations[:, knot] = model.rotations[:, source] * model.free_knots[source]
        model.translations[:, knot] = model.translations[:, source] * model.free_knots[source]
