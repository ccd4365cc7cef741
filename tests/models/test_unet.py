"""The SV4D 2.0 network: shapes, which images mix, the released reshape, cameras, checkpoints.

That it computes what the reference computes is tested in ``test_reference_parity.py``."""

from __future__ import annotations

import pytest
import torch

from models.attention import frame_layout, view_layout
from models.errors import ModelInputError
from models.unet import MultiViewUNet
from tests.models.inputs import random_inputs, trained_like


def tiny_unet(seed: int = 0, **overrides) -> MultiViewUNet:
    torch.manual_seed(seed)
    return trained_like(MultiViewUNet(**MultiViewUNet.tiny_config(**overrides)), seed).eval()


def run(unet: MultiViewUNet, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def test_forward_and_backward_shapes():
    unet = tiny_unet().train()
    inputs = random_inputs(batch=2, views=3, frames=2, size=8)
    inputs["sample"].requires_grad_(True)
    out = unet(**inputs, reference_latents=torch.randn(2, 3, 4, 8, 8)).sample
    assert out.shape == (2, 3, 2, 4, 8, 8)
    out.square().mean().backward()
    assert inputs["sample"].grad.shape == inputs["sample"].shape
    missing = [name for name, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_per_view_conditioning_video_equals_the_shared_one():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=2)
    shared = run(unet, inputs)
    inputs["cond_latents"] = inputs["cond_latents"][:, None].expand(-1, 2, -1, -1, -1, -1).clone()
    assert torch.equal(run(unet, inputs), shared)


@pytest.mark.parametrize("use_3d_attention", [True, False])
def test_a_change_in_one_image_reaches_every_view_and_frame(use_3d_attention):
    unet = tiny_unet(use_3d_attention=use_3d_attention)
    inputs = random_inputs(views=3, frames=3, size=8)
    before = run(unet, inputs)
    inputs["sample"][0, 2, 1] += 1.0
    changed = (run(unet, inputs) - before)[0].abs().flatten(2).amax(dim=2) > 0
    assert changed.all(), changed


def tagged_tokens(b: int, t: int, v: int, hw: int) -> torch.Tensor:
    """Tokens [b*t*v, hw, 3] in the network's (batch, frame, view) order whose channels are (frame, view, pixel)."""
    f, vv, p = torch.meshgrid(torch.arange(t), torch.arange(v), torch.arange(hw), indexing="ij")
    tags = torch.stack([f, vv, p], dim=-1).float()  # [t, v, hw, 3]
    return tags[None].expand(b, -1, -1, -1, -1).reshape(b * t * v, hw, 3)


def attention_groups(x: torch.Tensor, sequence: int) -> torch.Tensor:
    """What a temporal block attends over: it splits axis 0 as (batch, sequence) -> [groups, sequence, 3]."""
    n, s, c = x.shape
    return x.reshape(n // sequence, sequence, s, c).permute(0, 2, 1, 3).reshape(-1, sequence, c)


def test_view_attention_spans_views_in_the_8_view_layout():
    b, t, v, hw = 1, 3, 4, 16
    groups = attention_groups(view_layout(tagged_tokens(b, t, v, hw), b, t, v, False), v)
    assert torch.equal(groups[..., 1], torch.arange(v).float().expand(len(groups), v))  # all views ...
    assert (groups[..., 0] == groups[..., :1, 0]).all() and (groups[..., 2] == groups[..., :1, 2]).all()  # ... of one frame and pixel


def test_released_3d_layout_attends_over_neighbouring_pixels_not_views():
    """The quirk the sv4d2 checkpoint was trained with (docs/model.md): each view-attention sequence is
    V consecutive pixels of one view and frame."""
    b, t, v, hw = 1, 3, 4, 16
    groups = attention_groups(view_layout(tagged_tokens(b, t, v, hw), b, t, v, True), v)
    assert (groups[..., 1] == groups[..., :1, 1]).all()  # one view per sequence
    assert (groups[..., 0] == groups[..., :1, 0]).all()  # one frame per sequence
    assert torch.equal(groups[..., 2] - groups[..., :1, 2], torch.arange(v).float().expand(len(groups), v))  # V neighbouring pixels


@pytest.mark.parametrize("use_3d_attention", [True, False])
def test_frame_attention_spans_the_frames_of_one_view_and_pixel(use_3d_attention):
    b, t, v, hw = 2, 3, 4, 16
    x = view_layout(tagged_tokens(b, t, v, hw), b, t, v, use_3d_attention)
    groups = attention_groups(frame_layout(x, b, t, v, use_3d_attention), t)
    assert torch.equal(groups[..., 0], torch.arange(t).float().expand(len(groups), t))
    assert (groups[..., 1:] == groups[..., :1, 1:]).all()


def test_reference_views_and_image_embeddings_condition_the_output():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=2)
    masked = run(unet, inputs)
    with_reference = run(unet, inputs | {"reference_latents": torch.randn(1, 2, 4, 8, 8)})
    assert not torch.allclose(masked, with_reference)
    assert torch.equal(run(unet, inputs | {"reference_latents": torch.zeros(1, 2, 4, 8, 8)}), masked)
    per_frame = inputs | {"encoder_hidden_states": torch.randn(1, 2, 16)}
    assert not torch.allclose(run(unet, per_frame), masked)


def test_camera_angles_condition_the_output_and_azimuth_is_periodic():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=2)
    before = run(unet, inputs)
    moved = inputs | {"azimuth": inputs["azimuth"] + torch.tensor([[0.0, 45.0]])}
    assert not torch.allclose(run(unet, moved), before)
    wrapped = inputs | {"azimuth": inputs["azimuth"] - 360.0}
    torch.testing.assert_close(run(unet, wrapped), before, rtol=1e-4, atol=1e-5)


def test_per_frame_cameras_equal_per_view_cameras_when_constant():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=3)
    per_view = run(unet, inputs)
    inputs["elevation"] = inputs["elevation"][:, :, None].expand(-1, -1, 3).clone()
    inputs["azimuth"] = inputs["azimuth"][:, :, None].expand(-1, -1, 3).clone()
    assert torch.equal(run(unet, inputs), per_view)


def test_camera_vector_follows_the_sampling_script():
    """polar = (pi/2 - relative elevation) mod 2 pi, azimuth mod 2 pi, both in radians (simple_video_sample_4d2.py)."""
    unet = tiny_unet()
    vector = unet.camera_vector(torch.tensor([[30.0]]), torch.tensor([[-90.0]]), 0.0, (1, 1, 1))
    aug, polar, azimuth = vector[0].split(list(unet.config.camera_embed_dims))
    half = len(polar) // 2
    assert torch.allclose(polar[0], torch.cos(torch.tensor(torch.pi / 2 - torch.pi / 6)))
    assert torch.allclose(azimuth[0], torch.cos(torch.tensor(1.5 * torch.pi)))
    assert torch.equal(aug[: len(aug) // 2], torch.ones(len(aug) // 2)) and half > 0


def test_layers_yield_declared_names_and_channels():
    unet = tiny_unet()
    stream = unet.iter_layers(*random_inputs(views=2, frames=2, size=8).values())
    seen = []
    name, hidden = next(stream)
    while True:
        seen.append((name, hidden.shape[1]))
        try:
            name, hidden = stream.send(hidden)
        except StopIteration:
            break
    assert seen == unet.layer_channels


def test_save_and_load_give_identical_outputs(tmp_path):
    unet = tiny_unet(seed=3)
    inputs = random_inputs(views=2, frames=2)
    unet.save_pretrained(tmp_path / "unet")
    loaded = MultiViewUNet.from_pretrained(tmp_path / "unet").eval()
    saved, restored = unet.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    assert torch.equal(run(loaded, inputs), run(unet, inputs))


def test_gradient_checkpointing_gives_the_same_gradients():
    inputs = random_inputs(views=2, frames=2)
    grads = []
    for checkpointing in (False, True):
        unet = tiny_unet(seed=4).train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet(**inputs).sample.square().mean().backward()
        grads.append(unet.conv_in.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "field, value",
    [
        ("sample", torch.zeros(1, 2, 4, 8, 8)),
        ("cond_latents", torch.zeros(1, 2, 3, 8, 8)),
        ("encoder_hidden_states", torch.zeros(2, 1, 16)),
        ("azimuth", torch.zeros(1, 3)),
        ("reference_latents", torch.zeros(1, 3, 4, 8, 8)),
    ],
)
def test_bad_shapes_raise_a_reason_code(field, value):
    inputs = random_inputs(views=2, frames=2) | {field: value}
    with pytest.raises(ModelInputError) as error:
        tiny_unet()(**inputs)
    assert error.value.reason == "bad_shape" and field in str(error.value)


def test_odd_latent_sizes_are_refused_with_the_multiple_needed():
    with pytest.raises(ModelInputError, match="multiples of 2"):
        tiny_unet()(**random_inputs(views=2, frames=2, size=9))


def test_camera_embedding_width_must_match_the_time_embedding():
    with pytest.raises(ModelInputError, match="must sum to 4 x model_channels"):
        MultiViewUNet(**MultiViewUNet.tiny_config(camera_embed_dims=(8, 8, 8)))


def test_real_configurations_build_on_meta_device():
    for config in (MultiViewUNet.sv4d2_config(), MultiViewUNet.sv4d2_8views_config()):
        with torch.device("meta"):
            unet = MultiViewUNet(**config)
        names = [name for name, _ in unet.layer_channels]
        assert names[0] == "down.0.0" and names[-1] == "up.3.2" and "mid" in names
        assert unet.down_blocks[3].attentions is None and unet.up_blocks[0].attentions is None
