"""The project's SV4D 2.0 network and image encoder compute what Stability AI's code computes.

The expected outputs come from the reference implementation itself (``fixtures/make_reference.py``
ran Stability-AI/generative-models and open_clip on a tiny configuration). Here the same seeded
weights, under the reference's tensor names, go through :mod:`models.convert` into the project's
modules, which must reproduce the outputs to 1e-4 in fp32.
"""

from __future__ import annotations

import pytest
import torch

from models.convert import convert_image_encoder, convert_unet, CLIP_PREFIX, UNET_PREFIX
from models.image_encoder import OpenCLIPImageEncoder, kornia_resize
from models.unet import MultiViewUNet
from tests.models.reference_fixture import SEED, digest, load_fixture, reference_weights

TOLERANCE = 1e-4
CONFIGS = {"sv4d2": MultiViewUNet.sv4d2_config, "sv4d2_8views": MultiViewUNet.sv4d2_8views_config}
TINY = dict(camera_embed_dims=(32, 48, 48))


@pytest.fixture(scope="module")
def fixture():
    return load_fixture()


def converted_network(name: str, shapes: dict, expected_digest: torch.Tensor) -> MultiViewUNet:
    weights = reference_weights(shapes)
    assert digest(weights) == bytes(expected_digest.tolist()).hex(), "seeded weights differ from the fixture's"
    net = MultiViewUNet(**CONFIGS[name](**MultiViewUNet.tiny_config()))
    state, report = convert_unet({UNET_PREFIX + k: v for k, v in weights.items()}, net.config, net.state_dict())
    assert report.complete, report.summary()
    net.load_state_dict(state, strict=True)
    return net.eval()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("masked", [False, True], ids=["reference-views", "masked"])
def test_network_matches_reference(fixture, name, masked):
    tensors, shapes = fixture
    net = converted_network(name, shapes[name], tensors[f"digest.{name}"])
    noisy = tensors["input.noisy"].transpose(1, 2)  # (b, f, v) -> [B, V, F, ...]
    with torch.no_grad():
        out = net(
            noisy,
            tensors["input.c_noise"],
            tensors["input.video_latents"],
            tensors["input.context"],
            tensors["input.elevation"],
            tensors["input.azimuth"],
            reference_latents=None if masked else tensors["input.reference_latents"],
        ).sample
    expected = tensors[f"output.{name}{'.masked' if masked else ''}"].transpose(1, 2)
    assert expected.abs().max() > 0.1  # the fixture's output is not trivially small
    assert torch.allclose(out, expected, atol=TOLERANCE, rtol=0), (out - expected).abs().max()


def test_the_two_configurations_and_the_mask_make_a_difference(fixture):
    """Guards the comparisons above: each one checks something the others do not."""
    tensors, _ = fixture
    a, b, c = (tensors[k] for k in ("output.sv4d2", "output.sv4d2_8views", "output.sv4d2.masked"))
    assert (a - b).abs().max() > 1e-2 and (a - c).abs().max() > 1e-2


def test_image_encoder_matches_open_clip(fixture):
    tensors, shapes = fixture
    weights = reference_weights(shapes["clip"], SEED + 2)
    assert digest(weights) == bytes(tensors["digest.clip"].tolist()).hex()
    encoder = OpenCLIPImageEncoder(**OpenCLIPImageEncoder.tiny_config()).eval()
    source = {CLIP_PREFIX + "visual." + k: v for k, v in weights.items()}
    state, report = convert_image_encoder(source, encoder.state_dict())
    assert report.complete, report.summary()
    encoder.load_state_dict(state, strict=True)
    with torch.no_grad():
        pre = encoder.preprocess(tensors["input.images"])
        out = encoder(tensors["input.images"])
    assert torch.allclose(pre, tensors["output.clip_preprocessed"], atol=TOLERANCE, rtol=0)
    assert torch.allclose(out, tensors["output.clip"], atol=TOLERANCE, rtol=0), (out - tensors["output.clip"]).abs().max()


def test_resize_blurs_only_when_downscaling():
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.equal(kornia_resize(images, (16, 16)), images)
    up = kornia_resize(images, (32, 32))
    assert torch.allclose(up, torch.nn.functional.interpolate(images, size=(32, 32), mode="bicubic", align_corners=True))
