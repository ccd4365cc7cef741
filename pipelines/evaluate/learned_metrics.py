"""Metrics that need pretrained networks: LPIPS, CLIP-S and the FVD family (FVD-F, FVD-V, FVD-Diag, FV4D).

Nothing is downloaded. Each network is a TorchScript file at a path the caller gives; a missing path
gives the metric the value ``"not computed: weights not found at <path>"`` (or ``... no path given``),
and a network that fails on the inputs gives ``"not computed: <why>"``, so a report always has every
key. The files and the calling convention each expects:

- LPIPS: ``module(x, y)`` with float ``[N, 3, H, W]`` images in [-1, 1] -> ``N`` distances (any shape
  with N elements), e.g. ``torch.jit.trace(lpips.LPIPS(net="alex"), (x, y))``.
- CLIP-S: ``module(images)`` with float ``[N, 3, 224, 224]`` CLIP-normalised images -> ``[N, D]``
  image embeddings (a traced CLIP vision tower with its projection). CLIP-S is the mean cosine
  similarity of generated and true images, as SV4D reports it.
- FVD: the I3D detector of StyleGAN-V / fvd-comparison (``i3d_torchscript.pt``), called as
  ``module(videos, rescale=False, resize=True, return_features=True)`` with float
  ``[N, 3, T, H, W]`` videos in [-1, 1] -> ``[N, D]`` features. The Frechet distance of the two
  feature sets is computed only above a stated number of videos and frames (:class:`LearnedMetrics`). Videos read a grid ``[V, F]`` four ways (SV4D):
  FVD-F along the frames of each view, FVD-V along the views of each frame, FVD-Diag along the
  diagonal (view i, frame i), FV4D through every view and frame, views reversed on odd frames.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

MetricValue = float | str
LEARNED_METRICS = ("lpips", "clip_s", "fvd_f", "fvd_v", "fvd_diag", "fv4d")
FVD_METRICS = ("fvd_f", "fvd_v", "fvd_diag", "fv4d")
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BATCH = 16
FVD_MIN_VIDEOS = 512
FVD_MIN_FRAMES = 16


def not_computed(reason: str) -> str:
    return f"not computed: {reason}"


def load_scripted(path: str | None, what: str) -> torch.jit.ScriptModule | str:
    """The TorchScript network at ``path``, or the "not computed" entry saying why there is none."""
    if path is None:
        return not_computed(f"no {what} weights path given")
    if not Path(path).is_file():
        return not_computed(f"weights not found at {path}")
    try:
        return torch.jit.load(path, map_location="cpu").eval()
    except RuntimeError as exc:
        return not_computed(f"{path} is not a TorchScript file: {exc}".splitlines()[0])


class LearnedMetrics:
    """Scores generated against true grids sample by sample (LPIPS, CLIP-S), and keeps the grids for
    the set-level FVD family.

    FVD is a distance between two distributions of I3D features (400 dimensions): with fewer videos
    than dimensions the covariances are singular and the number mostly measures the sample size. It
    is computed only from ``fvd_min_videos`` videos a side (default 512, above the feature dimension;
    StyleGAN-V's FVD uses 2048) of at least ``fvd_min_frames`` frames (default 16, the clip length
    FVD is defined on, Unterthiner et al. 2018), else reported as "not computed: N videos, need M".
    """

    def __init__(
        self,
        lpips_path: str | None = None,
        clip_path: str | None = None,
        i3d_path: str | None = None,
        fvd_min_videos: int = FVD_MIN_VIDEOS,
        fvd_min_frames: int = FVD_MIN_FRAMES,
    ):
        self.lpips = load_scripted(lpips_path, "LPIPS")
        self.clip = load_scripted(clip_path, "CLIP")
        self.i3d = load_scripted(i3d_path, "I3D")
        self.fvd_min_videos, self.fvd_min_frames = max(fvd_min_videos, 2), fvd_min_frames
        self.generated: list[np.ndarray] = []  # uint8 [V, F, H, W, 3] per sample, kept for FVD
        self.true: list[np.ndarray] = []
        self.per_sample: list[dict[str, MetricValue]] = []

    @torch.no_grad()
    def add(self, generated: np.ndarray, true: np.ndarray) -> dict[str, MetricValue]:
        """Score one sample's grids; returns (and keeps) its LPIPS and CLIP-S."""
        if generated.shape != true.shape or generated.ndim != 5:
            raise ValueError(f"expected two uint8 [V, F, H, W, 3] grids of one shape, got {generated.shape} and {true.shape}")
        images_gen = _images(generated.reshape(-1, *generated.shape[2:]))
        images_true = _images(true.reshape(-1, *true.shape[2:]))
        scores: dict[str, MetricValue] = {
            "lpips": _guarded(self.lpips, lambda net: _lpips(net, images_gen, images_true)),
            "clip_s": _guarded(self.clip, lambda net: _clip_similarity(net, images_gen, images_true)),
        }
        self.per_sample.append(scores)
        if not isinstance(self.i3d, str):
            self.generated.append(generated)
            self.true.append(true)
        return scores

    @torch.no_grad()
    def compute(self) -> dict[str, MetricValue]:
        """LPIPS and CLIP-S averaged over the samples, and the FVD family over all of them."""
        if not self.per_sample:
            return {name: not_computed("no samples") for name in LEARNED_METRICS}
        results: dict[str, MetricValue] = {}
        for name in ("lpips", "clip_s"):
            values = [s[name] for s in self.per_sample]
            reasons = [v for v in values if isinstance(v, str)]
            results[name] = reasons[0] if reasons else float(np.mean(values))
        for name in FVD_METRICS:
            results[name] = _guarded(self.i3d, lambda net, name=name: self._fvd(net, name))
        return results

    def _fvd(self, net: torch.jit.ScriptModule, name: str) -> float:
        generated = [video for grid in self.generated for video in grid_videos(grid, name)]
        true = [video for grid in self.true for video in grid_videos(grid, name)]
        if len(generated) < self.fvd_min_videos:
            raise _NotComputed(f"{len(generated)} videos, need {self.fvd_min_videos}")
        if len(generated[0]) < self.fvd_min_frames:
            raise _NotComputed(f"videos of {len(generated[0])} frames, need {self.fvd_min_frames}")
        return frechet_distance(_i3d_features(net, generated), _i3d_features(net, true))


class _NotComputed(Exception):
    pass


def _guarded(net: torch.jit.ScriptModule | str, compute: Callable[[torch.jit.ScriptModule], float]) -> MetricValue:
    """The metric, or why not: a missing network, or one that fails on these inputs (the report survives)."""
    if isinstance(net, str):
        return net
    try:
        value = float(compute(net))
    except _NotComputed as exc:
        return not_computed(str(exc))
    except (RuntimeError, ValueError, torch.jit.Error) as exc:
        return not_computed(f"the network failed on these inputs: {str(exc).splitlines()[0]}")
    return value if np.isfinite(value) else not_computed(f"non-finite value {value}")


def grid_videos(grid: np.ndarray, kind: str) -> list[np.ndarray]:
    """The videos ``[T, H, W, 3]`` that one ``[V, F, H, W, 3]`` grid contributes to an FVD variant."""
    n_views, n_frames = grid.shape[:2]
    if kind == "fvd_f":
        return [grid[v] for v in range(n_views)]
    if kind == "fvd_v":
        return [grid[:, f] for f in range(n_frames)]
    if kind == "fvd_diag":
        return [np.stack([grid[i, i] for i in range(min(n_views, n_frames))])]
    if kind == "fv4d":
        order = [(v if f % 2 == 0 else n_views - 1 - v, f) for f in range(n_frames) for v in range(n_views)]
        return [np.stack([grid[v, f] for v, f in order])]
    raise ValueError(f"unknown FVD variant {kind!r}; expected one of {FVD_METRICS}")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N, D]."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Fewer videos than feature dimensions make the product singular; its root is still the usual estimate.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(np.atleast_2d(cov_a) @ np.atleast_2d(cov_b))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


def _images(uint8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(uint8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lpips(net: torch.jit.ScriptModule, a: torch.Tensor, b: torch.Tensor) -> float:
    distances = [net(a[i : i + BATCH], b[i : i + BATCH]).reshape(-1) for i in range(0, len(a), BATCH)]
    return float(torch.cat(distances).mean())


def _clip_similarity(net: torch.jit.ScriptModule, a: torch.Tensor, b: torch.Tensor) -> float:
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def embed(images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), BATCH):
            unit = F.interpolate((images[i : i + BATCH] + 1) / 2, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", antialias=True)
            out.append(net((unit.clamp(0, 1) - mean) / std))
        return F.normalize(torch.cat(out).float(), dim=-1)

    return float((embed(a) * embed(b)).sum(dim=-1).mean())


def _i3d_features(net: torch.jit.ScriptModule, videos: Sequence[np.ndarray]) -> np.ndarray:
    batch = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [N, 3, T, H, W]
    features = [net(batch[i : i + BATCH], rescale=False, resize=True, return_features=True) for i in range(0, len(batch), BATCH)]
    return torch.cat(features).double().numpy()
