"""Loading local weights: an SVD UNet into the RGB branch, diffusers VAEs, and clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    UNetSpatioTemporalConditionModel,
)

from models.errors import ModelInputError, WeightsNotFoundError
from models.unet import MultiViewUNet
from models.weights import load_svd_unet, load_svd_weights, load_vae


@pytest.fixture(scope="module")
def svd_folder(tmp_path_factory):
    """A tiny SVD-style pipeline folder with only its unet/, built and saved here (no downloads)."""
    torch.manual_seed(0)
    svd = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        num_attention_heads=(2, 4),
        cross_attention_dim=32,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,  # SVD's 3 added time ids x 8
        layers_per_block=1,
    )
    folder = tmp_path_factory.mktemp("svd")
    svd.save_pretrained(folder / "unet")
    return folder, svd.state_dict()


def test_svd_unet_loads_into_the_rgb_branch_with_a_report(svd_folder):
    folder, svd_state = svd_folder
    unet, report = load_svd_unet(folder)
    state = unet.state_dict()
    assert report.shape_mismatched == [("add_embedding.linear_1.weight", (128, 24), (128, 16))]
    assert report.new and all(re.search(r"\.view_(transformer_blocks|mixer)\.", k) for k in report.new)
    assert report.unused and all(re.search(r"\.resnets\.\d+\.(temporal_res_block|time_mixer)\.", k) for k in report.unused)
    # Every target tensor is exactly one of loaded, new or mismatched.
    mismatched = [k for k, _, _ in report.shape_mismatched]
    assert sorted(report.loaded + report.new + mismatched) == sorted(state)
    for key in report.loaded:
        source = key if key in svd_state else re.sub(r"\.resnets\.(\d+)\.", r".resnets.\1.spatial_res_block.", key)
        assert torch.equal(state[key], svd_state[source]), key
    assert "down_blocks.0.attentions.0.temporal_transformer_blocks.0.attn1.to_q.weight" in report.loaded
    assert "up_blocks.0.upsamplers.0.conv.weight" in report.loaded
    assert "loaded" in report.summary() and "add_embedding.linear_1.weight" in report.summary()


def test_svd_weights_into_an_existing_branch_keep_what_does_not_fit(svd_folder):
    folder, svd_state = svd_folder
    torch.manual_seed(1)
    # Narrower cross-attention context than the checkpoint's: those projections cannot load.
    unet = MultiViewUNet(**MultiViewUNet.tiny_config(block_out_channels=(32, 64), cross_attention_dim=16))
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    report = load_svd_weights(unet, folder / "unet")
    after = unet.state_dict()
    untouched = set(report.new) | {k for k, _, _ in report.shape_mismatched}
    assert all(torch.equal(after[k], before[k]) for k in untouched)
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight" in untouched
    assert "down_blocks.0.resnets.0.conv1.weight" in report.loaded
    assert torch.equal(after["down_blocks.0.resnets.0.conv1.weight"], svd_state["down_blocks.0.resnets.0.spatial_res_block.conv1.weight"])


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        load_svd_unet(tmp_path / "nowhere")
    assert error.value.reason == "weights_not_found"
    assert "huggingface-cli download" in str(error.value) and "nowhere" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        load_vae(tmp_path / "empty")


def test_corrupt_weights_raise_bad_weights(svd_folder, tmp_path):
    folder, _ = svd_folder
    broken = tmp_path / "unet"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "unet" / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelInputError) as error:
        load_svd_unet(broken)
    assert error.value.reason == "bad_weights"


@pytest.mark.parametrize(
    "vae",
    [
        lambda: AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                              up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4),
        lambda: AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2),
    ],
    ids=["AutoencoderKL", "AutoencoderKLTemporalDecoder"],
)
def test_vae_loads_from_a_pipeline_folder(vae, tmp_path):
    torch.manual_seed(0)
    original = vae()
    original.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path)
    assert type(loaded) is type(original)
    state, expected = loaded.state_dict(), original.state_dict()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_vae_folder_of_another_class_is_refused(svd_folder):
    folder, _ = svd_folder
    with pytest.raises(ModelInputError) as error:
        load_vae(folder / "unet")
    assert error.value.reason == "bad_weights" and "UNetSpatioTemporalConditionModel" in str(error.value)
