"""Differentiable rendering of 3D Gaussians: a pure PyTorch splatter (any device; built for 32-64 px on
a CPU) and ``gsplat`` when it is installed and the tensors are on CUDA.

The PyTorch path is the EWA splatting of 3D Gaussian Splatting (Kerbl et al. 2023) without tiles: every
primitive is projected with the local affine approximation of the perspective (J W Sigma W^T J^T, plus
0.3 px^2 of low-pass as in the reference), evaluated at the pixel centres of a square patch around it
(within 3 sigma), sorted by camera depth and alpha-composited front to back per pixel. The work is
sparse (primitive, pixel) entries, so thousands of primitives at 32-64 px take milliseconds.
Cameras are the project's OpenCV ones: world-to-camera 4x4 and K in pixels, pixel (i, j) covering
[i, i+1] x [j, j+1], so its centre is at i + 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import torch

LOW_PASS = 0.3  # px^2 added to every projected covariance (the 3DGS reference's screen-space filter)
MAX_ALPHA = 0.99  # as the reference: keeps 1 - alpha away from 0 so transmittance stays differentiable
NEAR = 0.05  # primitives closer than this to the camera plane are dropped
CUTOFF = -4.5  # beyond 3 sigma a primitive adds nothing (exp(-4.5) = 1%), as the reference
PATCH_SHARE = 8  # a patch is at most this fraction of the image side, either way of the centre


@dataclass
class Splats:
    """Primitives at one instant: centres [N, 3], covariances [N, 3, 3], opacities [N] in (0, 1), and
    features [N, C] composited per pixel (colour, part probabilities...)."""

    means: torch.Tensor
    covariances: torch.Tensor
    opacities: torch.Tensor
    features: torch.Tensor


def covariances(log_scales: torch.Tensor, quats: torch.Tensor) -> torch.Tensor:
    """R S S^T R^T of scales (log) [N, 3] and quaternions (w, x, y, z) [N, 4]."""
    rotation = quaternion_matrix(quats)
    scaled = rotation * torch.exp(log_scales)[:, None, :]
    return scaled @ scaled.transpose(1, 2)


def quaternion_matrix(quats: torch.Tensor) -> torch.Tensor:
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)


def render(
    splats: Splats, extrinsics: torch.Tensor, intrinsics: torch.Tensor, height: int, width: int,
    background: torch.Tensor, backend: str = "torch",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [H, W, C] composited over ``background`` [C], alpha [H, W])."""
    if backend == "gsplat":
        return _render_gsplat(splats, extrinsics, intrinsics, height, width, background)
    rotation, translation = extrinsics[:3, :3], extrinsics[:3, 3]
    order = torch.argsort((splats.means.detach() @ rotation.T.detach())[:, 2])  # front to back
    points = splats.means[order] @ rotation.T + translation
    z = points[:, 2].clamp(min=NEAR)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    u = fx * points[:, 0] / z + cx
    v = fy * points[:, 1] / z + cy
    zeros = torch.zeros_like(z)
    jacobian = torch.stack(
        [fx / z, zeros, -fx * points[:, 0] / (z * z), zeros, fy / z, -fy * points[:, 1] / (z * z)], dim=-1
    ).reshape(-1, 2, 3)
    transform = jacobian @ rotation
    cov = transform @ splats.covariances[order] @ transform.transpose(1, 2)
    a, b, c = cov[:, 0, 0] + LOW_PASS, cov[:, 0, 1], cov[:, 1, 1] + LOW_PASS
    det = (a * c - b * b).clamp(min=1e-12)
    # Each primitive covers a square patch around its centre, as wide as 3 sigma of the widest one
    # (capped at an eighth of the image): dense per-pixel work only where a primitive can reach.
    spread = 0.5 * (a + c) + torch.sqrt((0.25 * (a - c) ** 2 + b * b).clamp(min=0))
    cap = max(3, round(max(height, width) / PATCH_SHARE))
    radius = int(min(cap, max(1, math.ceil(3 * float(spread.detach().max().sqrt())))))
    offsets = torch.arange(-radius, radius + 1, device=u.device)
    px = (torch.floor(u.detach()).long()[:, None, None] + offsets[None, None, :]).expand(-1, len(offsets), -1)
    py = (torch.floor(v.detach()).long()[:, None, None] + offsets[None, :, None]).expand(-1, -1, len(offsets))
    px, py = px.reshape(len(u), -1), py.reshape(len(u), -1)
    dx = px + 0.5 - u[:, None]
    dy = py + 0.5 - v[:, None]
    power = -0.5 * (c[:, None] * dx * dx - 2 * b[:, None] * dx * dy + a[:, None] * dy * dy) / det[:, None]
    keep = (px >= 0) & (px < width) & (py >= 0) & (py < height) & (power.detach() > CUTOFF) & (points[:, 2:3].detach() > NEAR)
    primitive, slot = keep.nonzero(as_tuple=True)  # primitive-major: front to back within every pixel
    pixel = py[primitive, slot] * width + px[primitive, slot]
    alpha = (splats.opacities[order][primitive] * torch.exp(power[primitive, slot])).clamp(max=MAX_ALPHA)
    pixel, by_pixel = torch.sort(pixel, stable=True)  # stable: depth order kept inside each pixel
    primitive, alpha = primitive[by_pixel], alpha[by_pixel]
    # Transmittance before each entry: an exclusive cumulative sum of log(1 - alpha) restarted per pixel
    # (float64: the running sum spans every entry of the image).
    log_pass = torch.log1p(-alpha.double())
    before = torch.cumsum(log_pass, 0) - log_pass
    _, counts = torch.unique_consecutive(pixel, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    transmittance = torch.exp(before - torch.repeat_interleave(before[starts], counts)).to(alpha.dtype)
    weights = alpha * transmittance
    features = splats.features[order][primitive] * weights[:, None]
    image = torch.zeros(height * width, features.shape[1], dtype=features.dtype, device=u.device).index_add(0, pixel, features)
    coverage = torch.zeros(height * width, dtype=weights.dtype, device=u.device).index_add(0, pixel, weights)
    image = image + (1 - coverage)[:, None] * background
    return image.reshape(height, width, -1), coverage.reshape(height, width)


def _render_gsplat(splats, extrinsics, intrinsics, height, width, background):
    """gsplat's tiled CUDA rasteriser on the same inputs (never run on the machines this was written on:
    no GPU was lent; the PyTorch path is the tested one)."""
    from gsplat import rasterization

    image, alpha, _ = rasterization(
        splats.means, None, None, splats.opacities, splats.features, extrinsics[None], intrinsics[None],
        width, height, near_plane=NEAR, eps2d=LOW_PASS, covars=splats.covariances, backgrounds=background[None],
    )
    return image[0], alpha[0, ..., 0]


def backend_for(requested: str, device: torch.device | str) -> str:
    """The renderer to use: ``gsplat`` only when asked for (or ``auto``) and usable here."""
    on_cuda = torch.device(device).type == "cuda"
    if requested == "torch" or (requested == "auto" and not on_cuda):
        return "torch"
    try:
        import gsplat  # noqa: F401
    except ImportError:
        if requested == "gsplat":
            raise RuntimeError("renderer 'gsplat' was asked for but gsplat is not installed; use renderer 'torch'")
        return "torch"
    if not on_cuda:
        raise RuntimeError("renderer 'gsplat' needs a CUDA device; use renderer 'torch' on the CPU")
    return "gsplat"
