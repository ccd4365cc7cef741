"""Loading local weights: the converted SV4D 2.0 network, diffusers VAEs, and clear errors."""

from __future__ import annotations


import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

from models.errors import ModelInputError, WeightsNotFoundError
from models.unet import MultiViewUNet
from models.weights import load_rgb_branch, load_vae, read_state_dict


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    """A tiny converted-style output folder with only its unet/ (no downloads)."""
    torch.manual_seed(0)
    unet = MultiViewUNet(**MultiViewUNet.tiny_config())
    folder = tmp_path_factory.mktemp("converted")
    unet.save_pretrained(folder / "unet")
    return folder, unet.state_dict()


def test_rgb_branch_loads_from_the_conversion_folder(unet_folder):
    folder, expected = unet_folder
    state = load_rgb_branch(folder).state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFoundError) as error:
        load_rgb_branch(tmp_path / "nowhere")
    assert error.value.reason == "weights_not_found"
    assert "models.convert" in str(error.value) and "nowhere" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        load_vae(tmp_path / "empty")


def test_corrupt_weights_raise_bad_weights(unet_folder, tmp_path):
    folder, _ = unet_folder
    broken = tmp_path / "unet"
    broken.mkdir()
    (broken / "config.json").write_text((folder / "unet" / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelInputError) as error:
        read_state_dict(broken)
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


def test_vae_folder_of_another_class_is_refused(unet_folder):
    folder, _ = unet_folder
    with pytest.raises(ModelInputError) as error:
        load_vae(folder / "unet")
    assert error.value.reason == "bad_weights" and "MultiViewUNet" in str(error.value)
