"""The training objective: EDM preconditioning, the contrastive part loss, and the training step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import EDMEulerScheduler

from models.errors import ModelInputError
from models.losses import (
    DiffusionObjective,
    EDMPreconditioning,
    part_contrastive_loss,
    part_coverage,
    training_step,
)
from models.sp4d import SP4DModel
from models.unet import MultiViewUNet


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_training_preconditioning_matches_the_sampler(sigma_data):
    """Training (EDMPreconditioning) and sampling (EDMEulerScheduler) must use one parameterisation."""
    edm = EDMPreconditioning(sigma_data)
    scheduler = EDMEulerScheduler(sigma_data=sigma_data, prediction_type="v_prediction")
    x, out = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for value in (0.002, 0.3, 1.0, 7.5, 700.0):
        sigma = torch.tensor(value)
        torch.testing.assert_close(edm.c_in(sigma) * x, scheduler.precondition_inputs(x, sigma))
        torch.testing.assert_close(edm.c_noise(sigma), scheduler.precondition_noise(sigma))
        torch.testing.assert_close(edm.denoised(out, x, sigma), scheduler.precondition_outputs(x, out, sigma))


def test_target_output_denoises_to_the_clean_sample():
    edm = EDMPreconditioning(1.0)
    clean, noise = torch.randn(4, 8), torch.randn(4, 8)
    for value in (0.01, 1.0, 80.0):
        sigma = torch.tensor(value, dtype=torch.float64)
        noisy = clean.double() + sigma * noise.double()
        target = edm.target(clean.double(), noisy, sigma)
        torch.testing.assert_close(edm.denoised(target, noisy, sigma), clean.double())
        # v-prediction: the target is (noise - sigma * clean) / sqrt(sigma^2 + 1) for sigma_data = 1.
        torch.testing.assert_close(target, (noise.double() - sigma * clean.double()) / (sigma**2 + 1).sqrt())


def two_view_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Features [1, 2, 1, 2, 2, 2] and masks [1, 2, 1, 2, 2]: parts 0 and 1 swap rows between views."""
    masks = torch.tensor([[[0, 0], [1, 1]], [[1, 1], [0, -1]]])[None, :, None]
    features = torch.tensor(
        [
            [[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 2.0]]],  # view 0: channels x 2 x 2
            [[[0.0, 1.0], [2.0, 9.0]], [[1.0, 2.0], [0.0, 9.0]]],  # view 1 (pixel (1, 1) is background)
        ]
    )[None, :, None]
    return features, masks


def test_contrastive_loss_matches_a_hand_computation():
    features, masks = two_view_example()
    temperature = 0.5
    # Pooled part features (channel means over each part's pixels), then normalised:
    # view 0: part 0 = (2, 0), part 1 = (0, 2); view 1: part 0 = (2, 0), part 1 = (0.5, 1.5).
    items = {(0, 0): (2.0, 0.0), (0, 1): (0.0, 2.0), (1, 0): (2.0, 0.0), (1, 1): (0.5, 1.5)}
    unit = {k: (x / math.hypot(x, y), y / math.hypot(x, y)) for k, (x, y) in items.items()}
    keys = list(unit)
    losses = []
    for a in keys:
        sims = {k: (unit[a][0] * unit[k][0] + unit[a][1] * unit[k][1]) / temperature for k in keys if k != a}
        denominator = sum(math.exp(s) for s in sims.values())
        positive = next(k for k in sims if k[1] == a[1])
        losses.append(-math.log(math.exp(sims[positive]) / denominator))
    expected = sum(losses) / len(losses)
    actual = part_contrastive_loss(features, masks, temperature, min_coverage=0.5)
    assert actual.item() == pytest.approx(expected, rel=1e-6)


def test_background_features_do_not_count():
    features, masks = two_view_example()
    changed = features.clone()
    changed[0, 1, 0, :, 1, 1] = torch.tensor([-50.0, 70.0])  # the background pixel of view 1
    assert torch.equal(part_contrastive_loss(changed, masks, 0.5), part_contrastive_loss(features, masks, 0.5))


def test_masks_at_a_finer_resolution_pool_onto_the_features():
    features, masks = two_view_example()
    fine = masks.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # 4x4 masks, same regions
    torch.testing.assert_close(part_contrastive_loss(features, fine, 0.5), part_contrastive_loss(features, masks, 0.5))


def test_part_ids_are_not_compared_across_samples():
    features, masks = two_view_example()
    other_features = features.flip(-1) * 2 + 1
    alone = [part_contrastive_loss(f, masks, 0.5) for f in (features, other_features)]
    together = part_contrastive_loss(torch.cat([features, other_features]), torch.cat([masks, masks]), 0.5)
    # Both samples have four anchors, so the batch loss is the mean of the per-sample losses.
    torch.testing.assert_close(together, (alone[0] + alone[1]) / 2)


def test_part_consistent_features_score_lower_than_shuffled_ones():
    g = torch.Generator().manual_seed(0)
    views, frames, size, parts, channels = 2, 3, 8, 4, 16
    masks = torch.randint(-1, parts, (1, views, frames, size, size), generator=g)
    prototypes = torch.randn(parts, channels, generator=g)
    features = prototypes[masks.clamp_min(0)].permute(0, 1, 2, 5, 3, 4)  # [1, V, F, C, h, w]
    features = features + 0.3 * torch.randn(features.shape, generator=g)
    consistent = part_contrastive_loss(features, masks, 0.1)
    shuffled_masks = masks.flatten(3)[..., torch.randperm(size * size, generator=g)].reshape(masks.shape)
    shuffled = part_contrastive_loss(features, shuffled_masks, 0.1)
    assert consistent < 0.5 * shuffled, (consistent, shuffled)


def test_one_part_alone_gives_zero_with_a_graph():
    features = torch.randn(1, 2, 2, 4, 3, 3, requires_grad=True)
    masks = torch.zeros(1, 2, 2, 3, 3, dtype=torch.long)
    loss = part_contrastive_loss(features, masks, 0.1)
    assert loss.item() == 0.0
    loss.backward()  # a zero that still backpropagates, so a training step never breaks on it


@pytest.mark.parametrize(
    "masks, reason",
    [(torch.zeros(1, 2, 3, 3, dtype=torch.long), "bad_shape"), (torch.zeros(1, 2, 2, 3, 3), "bad_dtype")],
)
def test_contrastive_loss_rejects_bad_masks(masks, reason):
    with pytest.raises(ModelInputError) as error:
        part_contrastive_loss(torch.randn(1, 2, 2, 4, 3, 3), masks, 0.1)
    assert error.value.reason == reason


def latent_batch(with_masks: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "rgb_latents": torch.randn(2, 2, 2, 4, 8, 8, generator=g),
        "part_latents": torch.randn(2, 2, 2, 4, 8, 8, generator=g),
        "cond_latents": torch.randn(2, 2, 4, 8, 8, generator=g),
        "image_embeddings": torch.randn(2, 1, 16, generator=g),
        "elevation": torch.zeros(2, 2),
        "azimuth": torch.tensor([[0.0, 180.0], [0.0, 90.0]]),
    }
    if with_masks:
        batch["part_masks"] = torch.randint(-1, 3, (2, 2, 2, 16, 16), generator=g)
    return batch


def tiny_sp4d() -> SP4DModel:
    torch.manual_seed(0)
    return SP4DModel(branch_config=MultiViewUNet.tiny_config())


def test_training_step_reports_every_term_and_is_reproducible():
    model = tiny_sp4d()
    first = training_step(model, latent_batch(), generator=torch.Generator().manual_seed(3))
    again = training_step(model, latent_batch(), generator=torch.Generator().manual_seed(3))
    assert set(first) == {"loss", "rgb", "part", "contrastive"}
    assert all(torch.isfinite(v) for v in first.values())
    assert first["contrastive"] > 0
    objective = DiffusionObjective()
    expected = first["rgb"] + first["part"] + objective.contrastive_weight * first["contrastive"]
    torch.testing.assert_close(first["loss"].detach(), expected)
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_without_masks_there_is_no_contrastive_term():
    losses = training_step(tiny_sp4d(), latent_batch(with_masks=False), generator=torch.Generator().manual_seed(3))
    assert losses["contrastive"].item() == 0.0
    torch.testing.assert_close(losses["loss"].detach(), losses["rgb"] + losses["part"])


def test_contrastive_loss_trains_the_part_branch_only():
    model = tiny_sp4d()
    objective = DiffusionObjective(rgb_weight=0, part_weight=0, contrastive_weight=1.0, contrastive_layer="up.0.1")
    training_step(model, latent_batch(), objective, generator=torch.Generator().manual_seed(3))["loss"].backward()
    part_grad = sum(p.grad.abs().sum() for p in model.part_branch.down_blocks.parameters() if p.grad is not None)
    rgb_grads = [p.grad for p in model.rgb_branch.parameters() if p.grad is not None]
    assert part_grad > 0
    # The RGB branch reaches those features only through BiDiFuse's zero-initialised last layer.
    assert all(not g.any() for g in rgb_grads)


def test_rgb_branch_alone_trains_first():
    torch.manual_seed(0)
    unet = MultiViewUNet(**MultiViewUNet.tiny_config())
    losses = training_step(unet, latent_batch(), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss", "rgb"}
    losses["loss"].backward()
    # conv_out starts at zero (as the reference's): only it learns at the first step, then all layers.
    assert unet.conv_out.weight.grad.abs().sum() > 0 and unet.conv_in.weight.grad.abs().sum() == 0
    torch.optim.SGD(unet.parameters(), lr=0.1).step()
    unet.zero_grad()
    training_step(unet, latent_batch(), generator=torch.Generator().manual_seed(1))["loss"].backward()
    assert unet.conv_in.weight.grad.abs().sum() > 0


def test_bad_batches_raise_reason_codes():
    batch = latent_batch()
    del batch["part_latents"]
    with pytest.raises(ModelInputError) as missing:
        training_step(tiny_sp4d(), batch)
    assert missing.value.reason == "missing_field" and "part_latents" in str(missing.value)
    batch = latent_batch()
    batch["part_masks"] = batch["part_masks"][:, :1]
    with pytest.raises(ModelInputError) as shape:
        training_step(tiny_sp4d(), batch)
    assert shape.value.reason == "bad_shape"


def test_conditioning_dropout_trains_the_unconditional_model():
    """Dropped samples see exactly the unconditional input of classifier-free guidance: zero image
    embeddings, input-video latents and reference views."""
    from tests.models.inputs import trained_like

    torch.manual_seed(0)
    unet = trained_like(MultiViewUNet(**MultiViewUNet.tiny_config())).eval()
    batch = latent_batch(with_masks=False) | {"reference_latents": torch.randn(2, 2, 4, 8, 8)}
    unconditional = batch | {k: torch.zeros_like(batch[k]) for k in ("cond_latents", "image_embeddings", "reference_latents")}

    def loss(b, **objective):
        with torch.no_grad():
            return training_step(unet, b, DiffusionObjective(**objective), torch.Generator().manual_seed(3))["rgb"]

    always = dict(conditioning_dropout=1.0, reference_mask_probability=0.0)
    never = dict(conditioning_dropout=0.0, reference_mask_probability=0.0)
    assert torch.equal(loss(batch, **always), loss(unconditional, **always))
    assert torch.equal(loss(unconditional, **never), loss(unconditional, **always))
    assert not torch.equal(loss(batch, **never), loss(batch, **always))
    # Masking only the reference views leaves the rest of the conditioning.
    masked_refs = batch | {"reference_latents": torch.zeros(2, 2, 4, 8, 8)}
    refs_off = dict(conditioning_dropout=0.0, reference_mask_probability=1.0)
    assert torch.equal(loss(batch, **refs_off), loss(masked_refs, **never))


def one_hot_coverage(masks: torch.Tensor, n_parts: int, size: tuple[int, int]) -> torch.Tensor:
    """The previous formulation: a pixel-resolution one-hot tensor, average-pooled to the features."""
    onehot = F.one_hot(masks.clamp_min(0), n_parts).permute(0, 3, 1, 2).float() * (masks >= 0)[:, None]
    return F.adaptive_avg_pool2d(onehot, size)


@pytest.mark.parametrize(
    "mask_size, feature_size",
    [((8, 8), (4, 4)), ((16, 12), (5, 3)), ((7, 9), (3, 4)), ((3, 4), (7, 9)), ((6, 6), (6, 6))],
)
def test_coverage_without_one_hot_equals_the_pooled_one_hot(mask_size, feature_size):
    """Divisible, non-divisible (overlapping windows) and upsampling sizes, background included."""
    g = torch.Generator().manual_seed(sum(mask_size + feature_size))
    masks = torch.randint(-1, 5, (3, *mask_size), generator=g)
    torch.testing.assert_close(part_coverage(masks, 5, feature_size), one_hot_coverage(masks, 5, feature_size), rtol=0, atol=1e-6)


def test_contrastive_loss_and_its_gradient_equal_the_one_hot_formulation():
    """The loss as it was computed before (one-hot masks pooled by adaptive_avg_pool2d), written out
    here, against part_contrastive_loss on the same input: values and gradients."""
    g = torch.Generator().manual_seed(4)
    masks = torch.randint(-1, 4, (2, 2, 3, 12, 12), generator=g)
    features = torch.randn(2, 2, 3, 8, 5, 5, generator=g)

    def one_hot_loss(feats: torch.Tensor, temperature: float = 0.1, min_coverage: float = 0.5) -> torch.Tensor:
        batch, views, frames, channels, h, w = feats.shape
        coverage = one_hot_coverage(masks.flatten(0, 2), 4, (h, w))
        area = coverage.sum(dim=(2, 3))
        pooled = torch.einsum("npyx,ncyx->npc", coverage, feats.flatten(0, 2)) / area.clamp_min(1e-8)[..., None]
        pooled = F.normalize(pooled, dim=-1).reshape(batch, -1, channels)
        present = (area >= min_coverage).reshape(batch, -1)
        ids = torch.arange(4).repeat(views * frames)
        losses = []
        for b in range(batch):
            z, part_id = pooled[b][present[b]], ids[present[b]]
            logits = z @ z.T / temperature
            not_self = ~torch.eye(len(z), dtype=torch.bool)
            positive = (part_id[:, None] == part_id[None, :]) & not_self
            valid = positive.any(dim=1) & (part_id[:, None] != part_id[None, :]).any(dim=1)
            log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, -math.inf), dim=1, keepdim=True)
            losses.append(-((log_prob * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1))[valid])
        return torch.cat(losses).mean()

    mine, theirs = features.clone().requires_grad_(), features.clone().requires_grad_()
    loss, expected = part_contrastive_loss(mine, masks, 0.1), one_hot_loss(theirs)
    loss.backward()
    expected.backward()
    assert loss.item() > 0
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)


def test_the_input_view_is_a_condition_not_an_rgb_target():
    """View 0's RGB latents enter the network clean (c_in * latents, no noise) and the RGB loss ignores
    the network's output there; the other views are noised and scored."""
    from tests.models.inputs import trained_like

    torch.manual_seed(0)
    unet = trained_like(MultiViewUNet(**MultiViewUNet.tiny_config())).eval()
    batch = latent_batch(with_masks=False)
    seen = []
    unet.conv_in.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    shift = {}

    def shifted_output(module, args, kwargs, out):
        for view, amount in shift.items():
            out.sample[:, view] += amount
        return out

    unet.register_forward_hook(shifted_output, with_kwargs=True)

    def rgb_loss(shifts: dict[int, float]):
        shift.clear()
        shift.update(shifts)
        with torch.no_grad():
            return training_step(unet, batch, DiffusionObjective(), torch.Generator().manual_seed(3))["rgb"]

    base = rgb_loss({})
    # training_step's first draw from the generator is ln(sigma) ~ N(p_mean, p_std^2), one per sample.
    objective = DiffusionObjective()
    sigma = (torch.randn(2, generator=torch.Generator().manual_seed(3)) * objective.p_std + objective.p_mean).exp()
    c_in = EDMPreconditioning().c_in(sigma).reshape(2, 1, 1, 1, 1)
    grid = seen[0].reshape(2, 2, 2, 8, 8, 8)  # images flat in (batch, frame, view) order; noisy then cond channels
    torch.testing.assert_close(grid[:, :, 0, :4], c_in * batch["rgb_latents"][:, 0])
    assert not torch.allclose(grid[:, :, 1, :4], c_in * batch["rgb_latents"][:, 1], atol=1e-2)
    assert torch.equal(rgb_loss({0: 100.0}), base)  # view 0's output is not scored
    assert not torch.equal(rgb_loss({1: 100.0}), base)
    one_view = batch | {"rgb_latents": batch["rgb_latents"][:, :1], "elevation": batch["elevation"][:, :1]}
    with pytest.raises(ModelInputError) as error:
        training_step(unet, one_view | {"azimuth": batch["azimuth"][:, :1]})
    assert error.value.reason == "bad_shape" and "input" in str(error.value)
