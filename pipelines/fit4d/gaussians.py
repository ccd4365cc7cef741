"""The dynamic asset: canonical 3D Gaussians that carry a colour and part logits, moved over time by one
rigid motion per kinematic part, blended per primitive (linear blend skinning).

A primitive's centre at time t is sum_k w_k (R_k(t) (x - c_k) + c_k + T_k(t)), with skinning weights
w = softmax(skin_logits) and pivots c_k; its covariance turns with the blended rotation. Each part's
rotation (axis-angle) and translation are stored at knot times (the trained frames) and interpolated
linearly between them, so the asset renders at any time of the clip. The reference knot is the
canonical pose and is held at the identity (this fixes the gauge between shape and motion).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipelines.fit4d.splat import Splats, covariances

# Hull sampling: a coarse pass in the cube [-HULL_BOX, HULL_BOX]^3 of the normalised object space (the
# object spans about [-0.5, 0.5]), then rounds of candidates inside the hull's bounding box.
HULL_BOX = 1.0
COARSE_CANDIDATES = 400_000
CANDIDATES_PER_PRIMITIVE = 20
FINE_ROUNDS = 10
INITIAL_PART_LOGIT = 3.0
INITIAL_SKIN_LOGIT = 4.0


class HullError(ValueError):
    """The training views' silhouettes share no volume: cameras and images disagree."""


class DynamicGaussians(nn.Module):
    def __init__(self, tensors: dict[str, torch.Tensor], knot_times: list[float], reference_knot: int):
        super().__init__()
        for name in ("means", "log_scales", "quats", "opacity_logits", "colour_logits", "part_logits", "skin_logits",
                     "rotations", "translations"):
            setattr(self, name, nn.Parameter(tensors[name].float().clone()))
        self.register_buffer("pivots", tensors["pivots"].float().clone())
        self.register_buffer("knot_times", torch.tensor(knot_times, dtype=torch.float32))
        free = torch.ones(len(knot_times))
        free[reference_knot] = 0.0
        self.register_buffer("free_knots", free)
        self.reference_knot = reference_knot

    @property
    def n_parts(self) -> int:
        return self.part_logits.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything ``gaussians.safetensors`` holds (the reference knot's motion is stored as zero)."""
        out = {name: getattr(self, name).detach().cpu().contiguous() for name in
               ("means", "log_scales", "quats", "opacity_logits", "colour_logits", "part_logits", "skin_logits", "pivots")}
        mask = self.free_knots[None, :, None].cpu()
        out["rotations"] = (self.rotations.detach().cpu() * mask).contiguous()
        out["translations"] = (self.translations.detach().cpu() * mask).contiguous()
        return out

    def part_motion(self, time: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation matrices [P, 3, 3] and translations [P, 3] of every part at ``time`` (clamped to the knots)."""
        knots = self.knot_times
        t = min(max(float(time), float(knots[0])), float(knots[-1]))
        upper = int(torch.searchsorted(knots, torch.tensor(t, dtype=knots.dtype), right=False).clamp(max=len(knots) - 1))
        lower = max(upper - 1, 0) if float(knots[upper]) > t else upper
        span = float(knots[upper] - knots[lower])
        share = (t - float(knots[lower])) / span if span > 0 else 0.0
        rotations = self.rotations * self.free_knots[None, :, None]
        translations = self.translations * self.free_knots[None, :, None]
        axis_angle = (1 - share) * rotations[:, lower] + share * rotations[:, upper]
        shift = (1 - share) * translations[:, lower] + share * translations[:, upper]
        return rodrigues(axis_angle), shift

    def at(self, time: float) -> Splats:
        """The primitives at ``time``; features are [RGB (3), part probabilities (P)]."""
        rotation, shift = self.part_motion(time)
        skin = torch.softmax(self.skin_logits, dim=1)  # [N, P]
        local = self.means[:, None, :] - self.pivots[None]  # [N, P, 3]
        moved = torch.einsum("pij,npj->npi", rotation, local) + self.pivots[None] + shift[None]
        means = (skin[..., None] * moved).sum(1)
        blended = torch.einsum("np,pij->nij", skin, rotation)
        cov = covariances(self.log_scales, self.quats)
        features = torch.cat([torch.sigmoid(self.colour_logits), torch.softmax(self.part_logits, dim=1)], dim=1)
        return Splats(means, blended @ cov @ blended.transpose(1, 2), torch.sigmoid(self.opacity_logits), features)


def rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] of axis-angle vectors [..., 3] (Rodrigues; smooth through zero,
    where the K^2 term vanishes with its gradient)."""
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis_angle.shape[:-1], 3, 3)
    theta = torch.sqrt((axis_angle * axis_angle).sum(-1) + 1e-12)[..., None, None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + torch.sin(theta) / theta * skew + (1 - torch.cos(theta)) / (theta * theta) * (skew @ skew)


def visual_hull(
    cameras: list[dict[str, np.ndarray]], alphas: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Up to ``n`` points inside every silhouette (alpha > 0.5) of the given views at one frame, and the
    hull's volume. ``cameras``: {"E": 4x4, "K": 3x3} per image of ``alphas`` [V, H, W].

    A coarse pass over the cube [-HULL_BOX, HULL_BOX]^3 finds the hull's bounding box; points are then
    drawn inside that box (a thin object fills little of the cube) until ``n`` are inside.
    """
    coarse = rng.uniform(-HULL_BOX, HULL_BOX, size=(COARSE_CANDIDATES, 3))
    found = coarse[_inside(cameras, alphas, coarse)]
    if len(found) < 16:
        raise HullError(f"only {len(found)} of {COARSE_CANDIDATES} sampled points fall inside every training view's "
                        "silhouette: the cameras do not match the images (or the object is not in view)")
    margin = 2 * (2 * HULL_BOX) / COARSE_CANDIDATES ** (1 / 3)
    low, high = found.min(0) - margin, found.max(0) + margin
    points, drawn = [], 0
    for _ in range(FINE_ROUNDS):
        candidates = rng.uniform(low, high, size=(max(n, 1000) * CANDIDATES_PER_PRIMITIVE, 3))
        drawn += len(candidates)
        points.append(candidates[_inside(cameras, alphas, candidates)])
        if sum(len(p) for p in points) >= n:
            break
    points = np.concatenate(points)
    volume = float(np.prod(high - low)) * len(points) / drawn
    keep = rng.choice(len(points), size=min(n, len(points)), replace=False)
    return points[keep], volume


def _inside(cameras: list[dict[str, np.ndarray]], alphas: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    inside = np.ones(len(candidates), bool)
    for camera, alpha in zip(cameras, alphas):
        pixels, depth = _project(camera, candidates)
        col, row = np.floor(pixels[:, 0]).astype(int), np.floor(pixels[:, 1]).astype(int)
        h, w = alpha.shape
        on_image = (depth > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        hit = np.zeros(len(candidates), bool)
        hit[on_image] = alpha[row[on_image], col[on_image]] > 0.5
        inside &= hit
    return inside


def initial_tensors(
    points: np.ndarray, volume: float, cameras: list[dict[str, np.ndarray]], rgb: np.ndarray, part_ids: np.ndarray,
    n_parts: int, n_knots: int,
) -> dict[str, torch.Tensor]:
    """Primitives at the hull points: colour and part from the pixels they project to in the views
    (the part by majority vote), isotropic scale from the spacing, skinned to their own part."""
    n = len(points)
    colour_sum = np.zeros((n, 3))
    votes = np.zeros((n, n_parts + 1))
    for camera, image, ids in zip(cameras, rgb, part_ids):
        pixels, _ = _project(camera, points)
        h, w = ids.shape
        col = np.clip(np.floor(pixels[:, 0]).astype(int), 0, w - 1)
        row = np.clip(np.floor(pixels[:, 1]).astype(int), 0, h - 1)
        colour_sum += image[row, col]
        label = ids[row, col]
        votes[np.arange(n), np.where(label >= 0, label, n_parts)] += 1
    colour = np.clip(colour_sum / len(cameras), 0.02, 0.98)
    part = votes[:, :n_parts].argmax(1)
    voted = votes[:, :n_parts].sum(1) > 0
    onehot = np.zeros((n, n_parts))
    onehot[np.arange(n)[voted], part[voted]] = 1.0
    spacing = (volume / n) ** (1 / 3)
    pivots = np.stack([points[voted & (part == k)].mean(0) if np.any(voted & (part == k)) else points.mean(0)
                       for k in range(n_parts)])
    return {
        "means": torch.from_numpy(points),
        "log_scales": torch.full((n, 3), float(np.log(0.5 * spacing))),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        "opacity_logits": torch.zeros(n),
        "colour_logits": torch.from_numpy(np.log(colour / (1 - colour))),
        "part_logits": torch.from_numpy(INITIAL_PART_LOGIT * onehot),
        "skin_logits": torch.from_numpy(INITIAL_SKIN_LOGIT * onehot),
        "pivots": torch.from_numpy(pivots),
        "rotations": torch.zeros(n_parts, n_knots, 3),
        "translations": torch.zeros(n_parts, n_knots, 3),
    }


def _project(camera: dict[str, np.ndarray], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    in_camera = points @ camera["E"][:3, :3].T + camera["E"][:3, 3]
    depth = in_camera[:, 2]
    pixels = in_camera @ camera["K"].T
    return pixels[:, :2] / np.maximum(pixels[:, 2:3], 1e-9), depth
