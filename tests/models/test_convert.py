"""The converter maps every tensor of the released checkpoints onto the project's modules.

Tensors are built on the meta device with exactly the names and shapes listed in
``../shared/reference`` (taken from the reference implementation), so no memory is spent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from models.convert import CLIP_PREFIX, UNET_PREFIX, VAE_CONFIG, convert_checkpoint, convert_image_encoder, convert_unet, convert_vae, unet_key, unet_block_map
from models.errors import ModelInputError, WeightsNotFoundError
from models.image_encoder import OpenCLIPImageEncoder
from models.unet import MultiViewUNet
from tests.models.reference_fixture import SEED, load_fixture, reference_weights

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"
CONFIGS = {"sv4d2": MultiViewUNet.sv4d2_config, "sv4d2_8views": MultiViewUNet.sv4d2_8views_config}


def reference_keys(name: str) -> dict[str, list[int]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference key lists not found at {path}")
    return json.loads(path.read_text())["keys"]


def meta_tensors(keys: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    return {key: torch.empty(shape, device="meta") for key, shape in keys.items()}


def assert_loads(model: torch.nn.Module, converted: dict[str, torch.Tensor]) -> None:
    target = model.state_dict()
    wrong = {k: (tuple(v.shape), tuple(target[k].shape)) for k, v in converted.items() if k in target and v.shape != target[k].shape}
    assert not wrong, list(wrong.items())[:5]
    result = model.load_state_dict(converted, strict=False, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_released_network_loads_with_nothing_missing_or_unexpected(name):
    keys = reference_keys(f"{name}.unet-keys.json")
    with torch.device("meta"):
        net = MultiViewUNet(**CONFIGS[name]())
    converted, report = convert_unet(meta_tensors(keys), net.config, net.state_dict())
    assert report.complete and len(report.mapped) == len(keys) == len(net.state_dict())
    assert_loads(net, converted)
    assert sum(p.numel() for p in net.parameters()) == json.loads((REFERENCE / f"{name}.unet-keys.json").read_text())["n_parameters"]


def test_released_image_encoder_and_vae_load_with_nothing_missing_or_unexpected():
    keys = reference_keys("sv4d2.engine-keys.json")
    state = meta_tensors(keys)
    with torch.device("meta"):
        encoder, vae = OpenCLIPImageEncoder(), AutoencoderKL(**VAE_CONFIG)
    for model, (converted, report) in ((encoder, convert_image_encoder(state, encoder.state_dict())), (vae, convert_vae(state, vae.state_dict()))):
        assert report.complete, report.summary()
        assert not any(src.startswith("<reshaped>") for src in report.mapped)
        assert len(converted) == len(model.state_dict())
        assert_loads(model, converted)
    # Every tensor of the engine is accounted for by one of the three components.
    with torch.device("meta"):
        net = MultiViewUNet(**MultiViewUNet.sv4d2_config())
    reports = [convert_unet(state, net.config, net.state_dict())[1], convert_image_encoder(state, {})[1], convert_vae(state, {})[1]]
    accounted = set().union(*(set(r.mapped) | set(r.ignored) for r in reports))
    assert accounted == set(keys)


def test_block_names_follow_the_reference_layout():
    blocks = unet_block_map(MultiViewUNet.sv4d2_config(**{"num_res_blocks": 2, "channel_mult": (1, 2, 4, 4), "attention_resolutions": (4, 2, 1)}))
    assert unet_key("input_blocks.3.0.op.weight", blocks) == "down_blocks.0.downsamplers.0.conv.weight"
    assert unet_key("input_blocks.4.1.motion_blocks.0.attn2.to_k.weight", blocks) == "down_blocks.1.attentions.0.frame_transformer_blocks.0.attn2.to_k.weight"
    assert unet_key("output_blocks.2.1.conv.bias", blocks) == "up_blocks.0.upsamplers.0.conv.bias"  # lowest level: no attention
    assert unet_key("output_blocks.5.2.conv.bias", blocks) == "up_blocks.1.upsamplers.0.conv.bias"
    assert unet_key("middle_block.0.time_mix_blocks.in_layers.2.weight", blocks) == "mid_block.resnets.0.temporal_res_block.conv1.weight"
    assert unet_key("input_blocks.1.1.time_mixer_motion.mix_factor", blocks) == "down_blocks.0.attentions.0.frame_mixer.mix_factor"
    assert unet_key("input_blocks.99.0.in_layers.0.weight", blocks) is None


def test_convert_checkpoint_refuses_partial_files_and_writes_loadable_folders(tmp_path):
    """A tiny file with the reference's names (the parity fixture's): refused while the VAE is
    absent; converted with --allow-partial into folders that load and compute the reference's output."""
    tensors, shapes = load_fixture()
    state = {UNET_PREFIX + k: v for k, v in reference_weights(shapes["sv4d2"]).items()}
    state |= {CLIP_PREFIX + "visual." + k: v for k, v in reference_weights(shapes["clip"], SEED + 2).items()}
    path = tmp_path / "sv4d2.safetensors"
    save_file(state, str(path))
    sizes = dict(unet_config=MultiViewUNet.tiny_config(), encoder_config=OpenCLIPImageEncoder.tiny_config())
    with pytest.raises(ModelInputError, match="partial conversion refused"):
        convert_checkpoint(path, tmp_path / "out", **sizes)
    report = {r["component"]: r for r in json.loads((tmp_path / "out" / "conversion.json").read_text())}
    assert [len(report[c]["missing"]) > 0 for c in ("unet", "image_encoder", "vae")] == [False, False, True]
    assert not (tmp_path / "out" / "unet").exists()
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        convert_checkpoint(tmp_path / "absent.safetensors", tmp_path / "out")

    convert_checkpoint(path, tmp_path / "out", allow_partial=True, **sizes)
    net = MultiViewUNet.from_pretrained(tmp_path / "out" / "unet").eval()
    with torch.no_grad():
        out = net(
            tensors["input.noisy"].transpose(1, 2), tensors["input.c_noise"], tensors["input.video_latents"],
            tensors["input.context"], tensors["input.elevation"], tensors["input.azimuth"],
            reference_latents=tensors["input.reference_latents"],
        ).sample
    assert torch.allclose(out, tensors["output.sv4d2"].transpose(1, 2), atol=1e-4, rtol=0)
    assert AutoencoderKL.from_pretrained(tmp_path / "out" / "vae").config.use_post_quant_conv is False
