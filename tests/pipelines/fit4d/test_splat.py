"""The sparse PyTorch splatter against a dense, per-pixel reading of the same compositing rule, and
against the project's camera convention."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.build.blender.cameras import orbit_cameras, project
from pipelines.fit4d.gaussians import rodrigues
from pipelines.fit4d.splat import LOW_PASS, MAX_ALPHA, Splats, covariances, render

SIZE = 24


def _camera():
    camera = orbit_cameras(3, 20.0, 2.2, 40.0, SIZE)[1]
    return camera, torch.tensor(camera.extrinsics, dtype=torch.float32), torch.tensor(camera.intrinsics, dtype=torch.float32)


def _splats(n: int, seed: int, scale: float = 0.02) -> Splats:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.6
    log_scales = torch.log(scale * (0.5 + torch.rand(n, 3, generator=g)))
    quats = torch.randn(n, 4, generator=g)
    return Splats(means, covariances(log_scales, quats), 0.2 + 0.7 * torch.rand(n, generator=g), torch.rand(n, 4, generator=g))


def _dense(splats: Splats, extrinsics: torch.Tensor, intrinsics: torch.Tensor, background: torch.Tensor):
    """Every primitive at every pixel centre, composited front to back one primitive at a time."""
    points = splats.means @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    image = torch.zeros(SIZE, SIZE, splats.features.shape[1], dtype=torch.float64)
    transmittance = torch.ones(SIZE, SIZE, dtype=torch.float64)
    grid = torch.arange(SIZE, dtype=torch.float64) + 0.5
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    for i in torch.argsort(points[:, 2]).tolist():
        x, y, z = points[i].double()
        f = intrinsics[0, 0].double()
        u, v = f * x / z + intrinsics[0, 2], f * y / z + intrinsics[1, 2]
        j = torch.tensor([[f / z, 0, -f * x / z**2], [0, f / z, -f * y / z**2]], dtype=torch.float64)
        t = j @ extrinsics[:3, :3].double()
        cov = t @ splats.covariances[i].double() @ t.T + LOW_PASS * torch.eye(2, dtype=torch.float64)
        d = torch.stack([xs - u, ys - v], -1)
        power = -0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov), d)
        alpha = (splats.opacities[i] * torch.exp(power)).clamp(max=MAX_ALPHA) * (power > -4.5)
        image += (alpha * transmittance)[..., None] * splats.features[i].double()
        transmittance = transmittance * (1 - alpha)
    return image + transmittance[..., None] * background.double(), 1 - transmittance


def test_sparse_splatting_matches_the_dense_compositing_rule() -> None:
    _, extrinsics, intrinsics = _camera()
    splats = _splats(60, seed=1)
    background = torch.tensor([1.0, 1.0, 1.0, 0.0])
    image, coverage = render(splats, extrinsics, intrinsics, SIZE, SIZE, background)
    want_image, want_coverage = _dense(splats, extrinsics, intrinsics, background)
    assert coverage.max() > 0.5  # the primitives are in view, and overlap
    np.testing.assert_allclose(image.numpy(), want_image.numpy(), atol=2e-5)
    np.testing.assert_allclose(coverage.numpy(), want_coverage.numpy(), atol=2e-5)


def test_a_primitive_lands_where_the_camera_convention_projects_its_centre() -> None:
    camera, extrinsics, intrinsics = _camera()
    centre = np.array([[0.13, -0.07, 0.05]])
    splats = Splats(torch.tensor(centre, dtype=torch.float32), torch.eye(3)[None] * 1e-4, torch.tensor([0.9]),
                    torch.ones(1, 1))
    _, coverage = render(splats, extrinsics, intrinsics, SIZE, SIZE, torch.zeros(1))
    row, col = np.unravel_index(int(coverage.argmax()), coverage.shape)
    u, v = project(camera, centre)[0]
    assert (col, row) == (int(np.floor(u)), int(np.floor(v)))


def test_gradients_reach_every_parameter() -> None:
    _, extrinsics, intrinsics = _camera()
    base = _splats(40, seed=2)
    means = base.means.clone().requires_grad_()
    features = base.features.clone().requires_grad_()
    opacities = base.opacities.clone().requires_grad_()
    image, coverage = render(Splats(means, base.covariances, opacities, features), extrinsics, intrinsics, SIZE, SIZE,
                             torch.ones(4))
    (image.square().sum() + coverage.sum()).backward()
    for grad in (means.grad, features.grad, opacities.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_rodrigues_is_the_exponential_of_the_rotation_generator() -> None:
    w = torch.tensor([[0.0, 0.0, 0.0], [0.3, -1.2, 0.4], [1e-7, 0.0, 2e-7]])
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(-1, 3, 3)
    np.testing.assert_allclose(rodrigues(w).numpy(), torch.linalg.matrix_exp(skew).numpy(), atol=1e-6)
