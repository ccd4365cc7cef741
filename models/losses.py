"""Training objective: EDM v-prediction diffusion loss on both branches, plus the contrastive part loss.

EDM preconditioning (Karras et al. 2022) with v-prediction, as in SVD/SV4D and diffusers'
``EDMEulerScheduler(prediction_type="v_prediction")``; with ``sigma_data = 1`` it is SVD's scheme:

    x = x0 + sigma * n,   D(x; sigma) = c_skip * x + c_out * F(c_in * x, c_noise)
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = -sigma * sd / sqrt(sigma^2 + sd^2)
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = log(sigma) / 4

The loss is EDM's weighted L2, ``lambda(sigma) * |D - x0|^2`` with ``lambda = 1 / c_out^2``, computed
as the equal and better-conditioned ``|F - (x0 - c_skip * x) / c_out|^2``. Training noise levels
follow ``ln sigma ~ N(p_mean, p_std^2)`` (SVD's video fine-tuning values by default).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from models.errors import ModelInputError
from models.sp4d import SP4DModel
from models.unet import MultiViewUNet

Batch = Mapping[str, torch.Tensor]


class DiffusionObjective(BaseModel):
    """Everything that defines the training loss (the model configuration defines the network)."""

    model_config = ConfigDict(frozen=True)

    sigma_data: float = Field(1.0, gt=0, description="data standard deviation in EDM's preconditioning (SVD: 1)")
    p_mean: float = Field(0.7, description="mean of ln(sigma) during training")
    p_std: float = Field(1.6, gt=0, description="standard deviation of ln(sigma) during training")
    conditioning_dropout: float = Field(
        0.1,
        ge=0,
        le=1,
        description="probability per sample of training unconditionally (image embeddings, input-video latents and "
        "reference views all zero: the 'uncond' input of classifier-free guidance at sampling)",
    )
    reference_mask_probability: float = Field(
        0.5,
        ge=0,
        le=1,
        description="probability per sample of masking the reference views (SV4D 2.0's random masking: the model "
        "learns to generate without them, as it must for the first clip)",
    )
    rgb_weight: float = Field(1.0, ge=0)
    part_weight: float = Field(1.0, ge=0)
    # The SP4D paper does not give these three: they are guesses to tune.
    contrastive_weight: float = Field(0.1, ge=0)
    contrastive_temperature: float = Field(0.1, gt=0)
    contrastive_layer: str | None = Field(
        None, description="a name from SP4DModel.layer_names; None: the last layer (highest resolution)"
    )
    contrastive_min_coverage: float = Field(
        0.5, gt=0, description="a part takes part in the loss where it covers at least this many feature pixels"
    )


class EDMPreconditioning:
    """The c_skip, c_out, c_in, c_noise of EDM with v-prediction (see the module docstring)."""

    def __init__(self, sigma_data: float = 1.0):
        self.sigma_data = sigma_data

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        return -sigma * self.sigma_data / (sigma**2 + self.sigma_data**2).sqrt()

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1.0 / (sigma**2 + self.sigma_data**2).sqrt()

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * sigma.log()

    def denoised(self, model_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.c_skip(sigma) * noisy + self.c_out(sigma) * model_output

    def target(self, clean: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The model output F for which D(x; sigma) equals the clean sample."""
        return (clean - self.c_skip(sigma) * noisy) / self.c_out(sigma)


def training_step(
    model: SP4DModel | MultiViewUNet,
    batch: Batch,
    objective: DiffusionObjective = DiffusionObjective(),
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One forward pass and the losses; the caller calls ``losses["loss"].backward()``.

    ``batch`` holds ``rgb_latents`` and (for :class:`SP4DModel`) ``part_latents``, both
    ``[B, V, F, C, h, w]``; ``cond_latents`` ``[B, F, C, h, w]`` or ``[B, V, F, C, h, w]``;
    ``image_embeddings`` ``[B, F, D]`` (or ``[B, 1, D]``); ``elevation``, ``azimuth`` in degrees
    relative to the input view, ``[B, V]`` or ``[B, V, F]``; optionally ``reference_latents`` (and
    ``part_reference_latents``) ``[B, V, C, h, w]``, the first frame of each target view, unscaled;
    optionally ``part_masks`` ``[B, V, F, H, W]`` integer part ids (-1 background), at
    any resolution, for the contrastive loss. A bare :class:`MultiViewUNet` trains the RGB branch alone
    (SP4D's first stage). Returns ``loss`` (to backpropagate) and detached ``rgb``, ``part``,
    ``contrastive`` terms.

    View 0 is the input view: the condition, not a target. Its RGB latents enter the grid clean (no
    noise), as :class:`models.pipeline.SP4DPipeline` puts the given input there at every step, and the
    RGB loss is over the other views only. Its part latents stay a target: the input view's parts are
    what SP4D is asked for.
    """
    two_branches = isinstance(model, SP4DModel)
    check_batch(batch, needs_parts=two_branches)
    edm = EDMPreconditioning(objective.sigma_data)
    rgb = batch["rgb_latents"]
    batch_size = rgb.shape[0]
    log_sigma = torch.randn(batch_size, generator=generator, device=rgb.device) * objective.p_std + objective.p_mean
    sigma = log_sigma.exp().to(rgb.dtype)
    s = sigma.reshape(batch_size, 1, 1, 1, 1, 1)
    noisy_rgb = with_input_view(rgb + s * torch.randn(rgb.shape, generator=generator, device=rgb.device, dtype=rgb.dtype), rgb)
    keep = _keep(batch_size, objective.conditioning_dropout, generator, rgb.device)
    show_reference = keep * _keep(batch_size, objective.reference_mask_probability, generator, rgb.device)
    cond_latents, embeddings = _times(batch["cond_latents"], keep), _times(batch["image_embeddings"], keep)
    references = {
        name: _times(batch[key], show_reference) if batch.get(key) is not None else None
        for name, key in (("reference_latents", "reference_latents"), ("part_reference_latents", "part_reference_latents"))
    }
    conditioning = (cond_latents, embeddings, batch["elevation"], batch["azimuth"])

    if not two_branches:
        out = model(edm.c_in(s) * noisy_rgb, edm.c_noise(sigma), *conditioning, references["reference_latents"]).sample
        rgb_loss = F.mse_loss(out[:, 1:].float(), edm.target(rgb, noisy_rgb, s)[:, 1:].float())
        return {"loss": objective.rgb_weight * rgb_loss, "rgb": rgb_loss.detach()}

    part = batch["part_latents"]
    noisy_part = part + s * torch.randn(part.shape, generator=generator, device=part.device, dtype=part.dtype)
    masks = batch.get("part_masks")
    use_contrastive = masks is not None and objective.contrastive_weight > 0
    layer = (objective.contrastive_layer or model.layer_names[-1]) if use_contrastive else None
    out = model(
        edm.c_in(s) * noisy_rgb, edm.c_in(s) * noisy_part, edm.c_noise(sigma), *conditioning, feature_layer=layer, **references
    )
    rgb_loss = F.mse_loss(out.rgb[:, 1:].float(), edm.target(rgb, noisy_rgb, s)[:, 1:].float())
    part_loss = F.mse_loss(out.part.float(), edm.target(part, noisy_part, s).float())
    total = objective.rgb_weight * rgb_loss + objective.part_weight * part_loss
    contrastive = torch.zeros((), device=rgb.device)
    if use_contrastive:
        contrastive = part_contrastive_loss(
            out.part_features.float(), masks, objective.contrastive_temperature, objective.contrastive_min_coverage
        )
        total = total + objective.contrastive_weight * contrastive
    return {"loss": total, "rgb": rgb_loss.detach(), "part": part_loss.detach(), "contrastive": contrastive.detach()}


def with_input_view(grid: torch.Tensor, input_latents: torch.Tensor) -> torch.Tensor:
    """``grid`` [B, V, F, ...] with view 0 replaced by the input view's clean latents (``input_latents``
    [B, F, ...] or the whole grid [B, V, F, ...], whose view 0 is taken)."""
    if input_latents.ndim == grid.ndim:
        input_latents = input_latents[:, 0]
    return torch.cat([input_latents[:, None].to(grid.dtype), grid[:, 1:]], dim=1)


def _keep(batch_size: int, drop_probability: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """1 where a sample keeps its conditioning, 0 where it is dropped (a Bernoulli draw per sample,
    as the reference's conditioner drops embeddings with its ``ucg_rate``)."""
    if drop_probability <= 0:
        return torch.ones(batch_size, device=device)
    return (torch.rand(batch_size, generator=generator, device=device) >= drop_probability).float()


def _times(tensor: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return tensor * keep.reshape(-1, *[1] * (tensor.ndim - 1)).to(tensor.dtype)


def part_contrastive_loss(
    features: torch.Tensor, part_masks: torch.Tensor, temperature: float, min_coverage: float = 0.5
) -> torch.Tensor:
    """InfoNCE over features pooled per part region, across the views and frames of each sample.

    ``features`` [B, V, F, C, h, w]; ``part_masks`` [B, V, F, H, W] integer ids, -1 background. Each
    part id becomes an area fraction map, average-pooled to the feature resolution; a part's feature
    in one image is the coverage-weighted mean of the features, L2-normalised (coverage from
    :func:`part_coverage`, never a pixel-resolution one-hot tensor). For an anchor (a part
    in one view and frame) the positives are the same part in the other views and frames, the
    negatives every other part of the same sample (ids mean nothing across samples):

        loss(a) = -mean_{p in pos(a)} log( exp(s_ap / T) / sum_{k != a} exp(s_ak / T) )

    averaged over anchors with at least one positive and one negative (zero when there are none).
    """
    if features.ndim != 6 or part_masks.ndim != 5 or features.shape[:3] != part_masks.shape[:3]:
        raise ModelInputError(
            "bad_shape",
            f"features [B, V, F, C, h, w] and part_masks [B, V, F, H, W] must share B, V, F; "
            f"got {tuple(features.shape)} and {tuple(part_masks.shape)}",
        )
    if part_masks.dtype.is_floating_point or part_masks.dtype == torch.bool:
        raise ModelInputError("bad_dtype", f"part_masks must hold integer part ids, got {part_masks.dtype}")
    batch, views, frames, channels, height, width = features.shape
    n_parts = int(part_masks.max().item()) + 1
    if n_parts < 2:
        return features.sum() * 0.0
    coverage = part_coverage(part_masks.flatten(0, 2), n_parts, (height, width)).to(features.dtype)  # [N, P, h, w]
    area = coverage.sum(dim=(2, 3))  # [N, P] in feature pixels
    pooled = torch.einsum("npyx,ncyx->npc", coverage, features.flatten(0, 2)) / area.clamp_min(1e-8)[..., None]
    pooled = F.normalize(pooled, dim=-1).reshape(batch, views * frames * n_parts, channels)
    present = (area >= min_coverage).reshape(batch, views * frames * n_parts)
    ids = torch.arange(n_parts, device=features.device).repeat(views * frames)

    anchor_losses = []
    for b in range(batch):
        z, part_id = pooled[b][present[b]], ids[present[b]]
        logits = z @ z.T / temperature
        not_self = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        positive = (part_id[:, None] == part_id[None, :]) & not_self
        negative = part_id[:, None] != part_id[None, :]
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not valid.any():
            continue
        log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, -math.inf), dim=1, keepdim=True)
        mean_positive = (log_prob * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1)
        anchor_losses.append(-mean_positive[valid])
    if not anchor_losses:
        return features.sum() * 0.0
    return torch.cat(anchor_losses).mean()


def part_coverage(masks: torch.Tensor, n_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(one_hot(masks), size)`` without the one-hot tensor: ``masks`` [N, H, W]
    integer part ids (-1 background) -> [N, n_parts, h, w], the fraction of each feature pixel's
    pooling window covered by each part.

    The pooling is separable, ``coverage = A_y . onehot . A_x^T`` with ``A`` the adaptive pooling
    matrices (window ``[floor(i H / h), ceil((i + 1) H / h))``, weight 1 / its length). A pixel lies in
    at most ``K_y x K_x`` windows (1 x 1 when the sizes divide), so its weight is scattered into those
    cells of its part: index memory ``O(N H W)`` per window pair, whatever the number of parts,
    instead of ``O(N P H W)``.
    """
    n, height, width = masks.shape
    rows, row_weights = _pooling_windows(height, size[0], masks.device)  # [K_y, H]
    cols, col_weights = _pooling_windows(width, size[1], masks.device)  # [K_x, W]
    masks = masks.long()
    inside = masks >= 0
    base = masks.clamp_min(0) * (size[0] * size[1])  # [N, H, W]
    coverage = torch.zeros(n, n_parts * size[0] * size[1], device=masks.device)
    for row, row_weight in zip(rows, row_weights):
        for col, col_weight in zip(cols, col_weights):
            index = base + (row[:, None] * size[1] + col[None, :])
            weight = (row_weight[:, None] * col_weight[None, :]) * inside
            coverage.scatter_add_(1, index.flatten(1), weight.flatten(1))
    return coverage.reshape(n, n_parts, *size)


def _pooling_windows(size_in: int, size_out: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each input position, the (up to K) output cells of adaptive average pooling that contain it
    and its weight in each: ``cells``, ``weights`` [K, size_in] (weight 0 pads positions in fewer)."""
    out = torch.arange(size_out, device=device)
    starts = (out * size_in) // size_out
    ends = -((-(out + 1) * size_in) // size_out)  # ceil
    position = torch.arange(size_in, device=device)
    member = (position[None, :] >= starts[:, None]) & (position[None, :] < ends[:, None])  # [out, in]
    pooling = member / (ends - starts)[:, None]
    k = int(member.sum(dim=0).max())
    weights, cells = pooling.topk(k, dim=0)
    return cells, weights


def check_batch(batch: Batch, needs_parts: bool) -> None:
    """Raise :class:`ModelInputError` (``missing_field`` / ``bad_shape``) for a malformed batch."""
    required = ["rgb_latents", "cond_latents", "image_embeddings", "elevation", "azimuth"]
    if needs_parts:
        required.append("part_latents")
    missing = [key for key in required if key not in batch]
    if missing:
        raise ModelInputError("missing_field", f"batch lacks {missing}; it has {sorted(batch)}")
    rgb = batch["rgb_latents"]
    if rgb.ndim != 6:
        raise ModelInputError("bad_shape", f"rgb_latents must be [B, V, F, C, h, w], got {tuple(rgb.shape)}")
    if rgb.shape[1] < 2:
        raise ModelInputError(
            "bad_shape", f"rgb_latents has {rgb.shape[1]} view: view 0 is the input (the condition), so at least 2 are needed"
        )
    if needs_parts and batch["part_latents"].shape != rgb.shape:
        raise ModelInputError(
            "bad_shape", f"part_latents {tuple(batch['part_latents'].shape)} differ from rgb_latents {tuple(rgb.shape)}"
        )
    masks = batch.get("part_masks")
    if masks is not None and tuple(masks.shape[:3]) != tuple(rgb.shape[:3]):
        raise ModelInputError(
            "bad_shape", f"part_masks must be [B, V, F, H, W] with B, V, F = {tuple(rgb.shape[:3])}, got {tuple(masks.shape)}"
        )
