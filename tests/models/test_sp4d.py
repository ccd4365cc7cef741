"""The dual-branch model: BiDiFuse starts as a no-op, then couples the branches; checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch

from models.errors import ModelInputError
from models.losses import training_step
from models.sp4d import BiDiFuse, SP4DModel
from models.unet import MultiViewUNet
from tests.models.inputs import random_inputs


def tiny_sp4d(seed: int = 0) -> SP4DModel:
    torch.manual_seed(seed)
    return SP4DModel(branch_config=MultiViewUNet.tiny_config()).eval()


def sp4d_inputs(seed: int = 0) -> dict:
    inputs = random_inputs(views=2, frames=2, seed=seed)
    sample = inputs.pop("sample")
    part = torch.randn(sample.shape, generator=torch.Generator().manual_seed(seed + 100))
    return {"rgb_sample": sample, "part_sample": part, **inputs}


def branch_inputs(inputs: dict, branch: str) -> dict:
    rest = {k: v for k, v in inputs.items() if k not in ("rgb_sample", "part_sample")}
    return {"sample": inputs[f"{branch}_sample"], **rest}


def test_at_initialisation_each_branch_is_bit_identical_to_running_alone():
    model = tiny_sp4d()
    inputs = sp4d_inputs()
    with torch.no_grad():
        out = model(**inputs)
        rgb_alone = model.rgb_branch(**branch_inputs(inputs, "rgb")).sample
        part_alone = model.part_branch(**branch_inputs(inputs, "part")).sample
    assert torch.equal(out.rgb, rgb_alone)
    assert torch.equal(out.part, part_alone)


def test_bidifuse_zero_initialised_last_layer_and_one_per_layer():
    model = tiny_sp4d()
    assert len(model.bidifuse) == len(model.rgb_branch.layer_channels)
    for fuse, (_, channels) in zip(model.bidifuse, model.rgb_branch.layer_channels):
        for mlp in (fuse.to_rgb, fuse.to_part):
            assert mlp[0].in_channels == 2 * channels and mlp[2].out_channels == channels
            assert not mlp[2].weight.any() and not mlp[2].bias.any()
            assert mlp[0].weight.abs().sum() > 0  # the first layer is not zero, so gradients reach the last


def test_bidifuse_formula():
    torch.manual_seed(0)
    fuse = BiDiFuse(4)
    for mlp in (fuse.to_rgb, fuse.to_part):
        torch.nn.init.normal_(mlp[2].weight)
    h_rgb, h_part = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    both = torch.cat([h_rgb, h_part], dim=1)
    rgb, part = fuse(h_rgb, h_part)
    torch.testing.assert_close(rgb, h_rgb + fuse.to_rgb(both), rtol=0, atol=0)
    torch.testing.assert_close(part, h_part + fuse.to_part(both), rtol=0, atol=0)


def test_after_training_the_part_input_reaches_the_rgb_output():
    model = tiny_sp4d().train()
    batch = {
        "rgb_latents": torch.randn(1, 2, 2, 4, 8, 8),
        "part_latents": torch.randn(1, 2, 2, 4, 8, 8),
        "cond_latents": torch.randn(1, 2, 4, 8, 8),
        "image_embeddings": torch.randn(1, 1, 16),
        "elevation": torch.zeros(1, 2),
        "azimuth": torch.tensor([[0.0, 180.0]]),
    }
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    # The output and residual convolutions start at zero (as the reference's): gradients reach
    # BiDiFuse from the second step on.
    for step in range(3):
        optimiser.zero_grad()
        training_step(model, batch, generator=torch.Generator().manual_seed(step))["loss"].backward()
        optimiser.step()
    model.eval()
    inputs = sp4d_inputs()
    with torch.no_grad():
        before = model(**inputs).rgb
        inputs["part_sample"] = inputs["part_sample"] + 1.0
        after = model(**inputs).rgb
    assert not torch.allclose(before, after)


def test_from_rgb_branch_copies_weights_into_both_branches():
    torch.manual_seed(1)
    rgb = MultiViewUNet(**MultiViewUNet.tiny_config())
    model = SP4DModel.from_rgb_branch(rgb)
    source = rgb.state_dict()
    for branch in (model.rgb_branch, model.part_branch):
        state = branch.state_dict()
        assert state.keys() == source.keys()
        assert all(torch.equal(state[k], source[k]) for k in source)
    # Copies, not shared tensors: training one branch leaves the other alone.
    assert model.part_branch.conv_in.weight.data_ptr() != model.rgb_branch.conv_in.weight.data_ptr()


def test_feature_layer_returns_fused_part_features():
    model = tiny_sp4d()
    with torch.no_grad():
        out = model(**sp4d_inputs(), feature_layer="up.0.1")
    assert out.part_features.shape == (1, 2, 2, 32, 4, 4)
    with pytest.raises(ModelInputError, match="up.9.9"):
        model(**sp4d_inputs(), feature_layer="up.9.9")


def test_save_and_load_give_identical_outputs(tmp_path):
    model = tiny_sp4d(seed=2)
    for fuse in model.bidifuse:  # non-zero fusion, so the test covers its weights too
        torch.nn.init.normal_(fuse.to_rgb[2].weight, std=0.1)
    model.save_pretrained(tmp_path / "sp4d")
    loaded = SP4DModel.from_pretrained(tmp_path / "sp4d").eval()
    inputs = sp4d_inputs(seed=5)
    with torch.no_grad():
        expected, actual = model(**inputs), loaded(**inputs)
    assert torch.equal(actual.rgb, expected.rgb)
    assert torch.equal(actual.part, expected.part)
