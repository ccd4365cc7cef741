"""The multi-view video UNet: shapes, which images attention mixes, cameras, checkpoints."""

from __future__ import annotations

import pytest
import torch

from models.attention import _frames_to_views, _views_to_frames
from models.errors import ModelInputError
from models.unet import MultiViewUNet
from tests.models.inputs import random_inputs


def tiny_unet(seed: int = 0, **overrides) -> MultiViewUNet:
    torch.manual_seed(seed)
    return MultiViewUNet(**MultiViewUNet.tiny_config(**overrides)).eval()


def run(unet: MultiViewUNet, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return unet(**inputs).sample


def test_forward_and_backward_shapes():
    unet = tiny_unet().train()
    inputs = random_inputs(batch=2, views=3, frames=2, size=8)
    inputs["sample"].requires_grad_(True)
    out = unet(**inputs).sample
    assert out.shape == (2, 3, 2, 4, 8, 8)
    out.square().mean().backward()
    assert inputs["sample"].grad.shape == inputs["sample"].shape
    missing = [name for name, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_odd_latent_size_and_per_view_conditioning():
    """9x9 latents (576 px / 64 after 3 halvings) and a [B, V, F, ...] conditioning video work."""
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=2, size=9)
    inputs["cond_latents"] = inputs["cond_latents"][:, None].expand(-1, 2, -1, -1, -1, -1).clone()
    shared = random_inputs(views=2, frames=2, size=9)
    per_view_out, shared_out = run(unet, inputs), run(unet, shared)
    assert per_view_out.shape == (1, 2, 2, 4, 9, 9)
    # The same video given per view equals the shared one exactly.
    assert torch.equal(per_view_out, shared_out)


def changed_cells(unet: MultiViewUNet, view: int, frame: int) -> torch.Tensor:
    """Which (view, frame) outputs move when only the input image (view, frame) changes: bool [V, F]."""
    inputs = random_inputs(views=3, frames=3, size=8)
    before = run(unet, inputs)
    inputs["sample"][0, view, frame] += torch.randn(inputs["sample"].shape[3:], generator=torch.Generator().manual_seed(1))
    after = run(unet, inputs)
    return (after - before)[0].abs().flatten(2).amax(dim=2) > 0


def test_view_and_frame_attention_mix_across_images():
    changed = changed_cells(tiny_unet(), view=0, frame=0)
    assert changed.all(), f"every view and frame should feel a change in (0, 0):\n{changed}"


def test_view_attention_alone_mixes_views_of_one_frame_only():
    changed = changed_cells(tiny_unet(frame_attention=False), view=0, frame=1)
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[:, 1] = True  # all views of frame 1, no other frame
    assert torch.equal(changed, expected), changed


def test_frame_attention_alone_mixes_frames_of_one_view_only():
    changed = changed_cells(tiny_unet(view_attention=False), view=1, frame=0)
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[1, :] = True  # all frames of view 1, no other view
    assert torch.equal(changed, expected), changed


def test_without_cross_image_attention_images_are_independent():
    changed = changed_cells(tiny_unet(view_attention=False, frame_attention=False), view=2, frame=2)
    expected = torch.zeros(3, 3, dtype=torch.bool)
    expected[2, 2] = True
    assert torch.equal(changed, expected), changed


def test_view_reshape_puts_views_innermost_and_back():
    """The axis view attention attends over is the view axis (SV4D 2.0's released reshape was not)."""
    batch, views, frames = 2, 3, 4
    cells = torch.arange(batch * views * frames, dtype=torch.float32)  # value = flat (b, v, f) index
    h = cells[:, None, None].expand(-1, 5, 6).clone()  # [N, tokens, channels]
    by_view = _frames_to_views(h, (batch, views, frames))
    for b in range(batch):
        for f in range(frames):
            for v in range(views):
                row = (b * frames + f) * views + v
                assert by_view[row, 0, 0].item() == (b * views + v) * frames + f
    assert torch.equal(_views_to_frames(by_view, (batch, views, frames)), h)


def test_camera_of_one_view_conditions_that_view():
    unet = tiny_unet(view_attention=False, frame_attention=False)
    inputs = random_inputs(views=2, frames=2)
    before = run(unet, inputs)
    inputs["azimuth"][0, 1] += 45.0
    after = run(unet, inputs)
    assert torch.equal(after[:, 0], before[:, 0])
    assert not torch.allclose(after[:, 1], before[:, 1])


def test_azimuth_is_periodic():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=2)
    before = run(unet, inputs)
    inputs["azimuth"] = inputs["azimuth"] - 360.0
    torch.testing.assert_close(run(unet, inputs), before, rtol=1e-4, atol=1e-5)


def test_per_frame_cameras_equal_per_view_cameras_when_constant():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=3)
    per_view = run(unet, inputs)
    inputs["elevation"] = inputs["elevation"][:, :, None].expand(-1, -1, 3).clone()
    inputs["azimuth"] = inputs["azimuth"][:, :, None].expand(-1, -1, 3).clone()
    assert torch.equal(run(unet, inputs), per_view)


def test_layers_yield_declared_names_and_channels():
    unet = tiny_unet()
    inputs = random_inputs(views=2, frames=2, size=8)
    stream = unet.iter_layers(*inputs.values())
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
    assert list(loaded.config.block_out_channels) == list(unet.config.block_out_channels)
    saved, restored = unet.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[k], restored[k]) for k in saved)
    # Bit for bit, not just close: AlignedLoadingMixin undoes the memory map's odd offsets.
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
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "field, value",
    [
        ("sample", torch.zeros(1, 2, 4, 8, 8)),
        ("cond_latents", torch.zeros(1, 2, 3, 8, 8)),
        ("encoder_hidden_states", torch.zeros(2, 1, 16)),
        ("azimuth", torch.zeros(1, 3)),
    ],
)
def test_bad_shapes_raise_a_reason_code(field, value):
    inputs = random_inputs(views=2, frames=2)
    inputs[field] = value
    with pytest.raises(ModelInputError) as error:
        tiny_unet()(**inputs)
    assert error.value.reason == "bad_shape"
    assert field in str(error.value)


def test_real_configuration_builds_on_meta_device():
    with torch.device("meta"):
        unet = MultiViewUNet(**MultiViewUNet.sv4d_config())
    names = [name for name, _ in unet.layer_channels]
    assert names[0] == "down.0.0" and names[-1] == "up.3.2" and "mid" in names
    assert unet.down_blocks[3].attentions is None and unet.up_blocks[0].attentions is None
    assert unet.conv_in.in_channels == 8 and unet.conv_out.out_channels == 4
