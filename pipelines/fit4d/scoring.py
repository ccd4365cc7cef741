"""Held-out scores of a fitted asset beside the trivial baseline.

The held-out cells are the (view, frame) pairs outside the trained views x trained frames: novel views
at trained frames, trained views at novel frames, and both novel. The baseline answers each cell with
the true image of the nearest trained view (smallest angle between camera centres) at the nearest
trained frame (in time): at a trained frame that is "the nearest training view at the same frame".
RGB: PSNR and SSIM (models.metrics, over white). Parts: the rendered part maps decoded with the
sample's palette (decode_with_palette), part mIoU (mean over the parts present in either map of the
IoU, background excluded; ids are the sample's, so no matching) and foreground accuracy (the share of
true foreground pixels given their true part).
"""

from __future__ import annotations

import numpy as np

from models.metrics import psnr, ssim
from pipelines.evaluate.decoding import decode_with_palette
from pipelines.fit4d.asset import render_grid
from pipelines.fit4d.fit import torch_threads
from pipelines.fit4d.gaussians import DynamicGaussians
from pipelines.fit4d.target import FitTarget

KINDS = ("novel_view", "novel_frame", "novel_both")


def part_miou(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean IoU over the part ids (>= 0) present in either map; nan when neither has a part."""
    ids = np.union1d(np.unique(pred[pred >= 0]), np.unique(true[true >= 0]))
    if len(ids) == 0:
        return float("nan")
    return float(np.mean([np.sum((pred == i) & (true == i)) / np.sum((pred == i) | (true == i)) for i in ids]))


def foreground_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Share of the true foreground pixels whose predicted part is the true one."""
    labelled = true >= 0
    return float(np.mean(pred[labelled] == true[labelled])) if labelled.any() else float("nan")


def nearest_view(target: FitTarget, view: int, views: list[int]) -> int:
    centres = {v: _centre(target, v) for v in [view, *views]}
    unit = {v: c / np.linalg.norm(c) for v, c in centres.items()}
    return max(views, key=lambda v: (float(unit[v] @ unit[view]), -v))


def nearest_frame(target: FitTarget, frame: int, frames: list[int]) -> int:
    return min(frames, key=lambda f: (abs(target.frame_times[f] - target.frame_times[frame]), f))


def held_out_cells(target: FitTarget, views: list[int], frames: list[int]) -> dict[str, list[tuple[int, int]]]:
    cells: dict[str, list[tuple[int, int]]] = {kind: [] for kind in KINDS}
    for v in range(target.n_views):
        for f in range(target.n_frames):
            if v in views and f in frames:
                continue
            kind = "novel_both" if v not in views and f not in frames else "novel_view" if v not in views else "novel_frame"
            cells[kind].append((v, f))
    return cells


def score(model: DynamicGaussians, target: FitTarget, views: list[int], frames: list[int], backend: str = "torch",
          threads: int = 1) -> dict:
    """{kind: {"cells": n, "fit": metrics, "baseline": metrics}} for each kind with held-out cells,
    where metrics = {psnr, ssim, part_miou, part_accuracy}, each the mean over the kind's cells."""
    with torch_threads(threads):
        renders = render_grid(model, target.cameras, target.frame_times, target.palette, backend=backend)
    decoded = decode_with_palette(renders.parts, target.palette)
    report = {}
    for kind, chosen in held_out_cells(target, views, frames).items():
        if not chosen:
            continue
        fit_scores, base_scores = [], []
        for v, f in chosen:
            true_rgb, true_ids = target.rgb[v, f], target.part_ids[v, f]
            fit_scores.append(_metrics(renders.rgb[v, f].astype(np.float32) / 255.0, decoded[v, f], true_rgb, true_ids))
            bv, bf = nearest_view(target, v, views), nearest_frame(target, f, frames)
            base_scores.append(_metrics(target.rgb[bv, bf], target.part_ids[bv, bf], true_rgb, true_ids))
        report[kind] = {"cells": len(chosen), "fit": _mean(fit_scores), "baseline": _mean(base_scores)}
    return report


def _metrics(rgb: np.ndarray, ids: np.ndarray, true_rgb: np.ndarray, true_ids: np.ndarray) -> dict[str, float]:
    return {"psnr": psnr(rgb, true_rgb, data_range=1.0), "ssim": ssim(rgb, true_rgb, data_range=1.0),
            "part_miou": part_miou(ids, true_ids), "part_accuracy": foreground_accuracy(ids, true_ids)}


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.nanmean([s[key] for s in scores])) for key in scores[0]}


def _centre(target: FitTarget, view: int) -> np.ndarray:
    extrinsics = np.asarray(target.cameras[view].extrinsics)
    return -extrinsics[:3, :3].T @ extrinsics[:3, 3]
