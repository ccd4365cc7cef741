"""Sampling and the codecs: shapes, frame order through SVD's temporal decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

from models.errors import ModelInputError
from models.image_encoder import OpenCLIPImageEncoder, frame_embeddings
from models.pipeline import SP4DPipeline, chunk_starts, guidance_scales, karras_sigmas
from models.sp4d import SP4DModel
from models.unet import MultiViewUNet
from models.vae import (
    PixelCodec,
    VAECodec,
    decode_grid,
    encode_grid,
    to_model_range,
    to_uint8,
)
from tests.models.inputs import block_palette, block_part_ids, block_videos, trained_like


def tiny_vae_codec() -> VAECodec:
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
    )
    return VAECodec(vae)


def video_and_cameras(views: int = 2, frames: int = 2, size: int = 16):
    ids = block_part_ids(views, frames, size, n_parts=3)
    palette = block_palette(3)
    rgb, _ = block_videos(ids, palette)
    elevation = torch.full((1, views), 10.0)
    azimuth = torch.arange(views, dtype=torch.float32)[None] * (360.0 / views)
    return rgb[:1], elevation, azimuth, palette  # the input video is view 0: [1, F, H, W, 3]


def test_pipeline_generates_rgb_and_part_videos_through_a_vae():
    codec = tiny_vae_codec()
    torch.manual_seed(1)
    model = SP4DModel(branch_config=MultiViewUNet.tiny_config()).eval()
    pipe = SP4DPipeline(model, codec)
    video, elevation, azimuth, palette = video_and_cameras(views=3)
    embeddings = torch.randn(1, 1, 16)
    out = pipe(video, elevation, azimuth, embeddings, num_inference_steps=2,
               generator=torch.Generator().manual_seed(0))
    assert out.rgb.shape == out.parts.shape == (1, 3, 2, 16, 16, 3)
    assert out.rgb.dtype == out.parts.dtype == np.uint8
    again = pipe(video, elevation, azimuth, embeddings, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0))
    assert np.array_equal(again.rgb, out.rgb) and np.array_equal(again.parts, out.parts)


def test_pixel_space_pipeline_checks_its_inputs():
    torch.manual_seed(1)
    model = SP4DModel(branch_config=MultiViewUNet.tiny_config(in_channels=6, out_channels=3, reference_channels=3)).eval()
    pipe = SP4DPipeline(model, PixelCodec(), sigma_max=80.0)
    video, elevation, azimuth, _ = video_and_cameras()
    out = pipe(video, elevation, azimuth, torch.zeros(1, 1, 16), num_inference_steps=1)
    assert out.parts.shape == (1, 2, 2, 16, 16, 3)
    with pytest.raises(ModelInputError) as error:
        pipe(video, elevation[:, :1].expand(2, 1), azimuth, torch.zeros(1, 1, 16), num_inference_steps=1)
    assert error.value.reason == "bad_shape"
    with pytest.raises(ModelInputError) as error:
        pipe(video.astype(np.float32), elevation, azimuth, torch.zeros(1, 1, 16), num_inference_steps=1)
    assert error.value.reason == "bad_dtype"


def test_temporal_decoder_sees_each_views_frames_in_order():
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2)
    codec = VAECodec(vae)
    latents = torch.randn(1, 2, 3, 4, 4, 4)
    grid = decode_grid(codec, latents)
    assert grid.shape == (1, 2, 3, 3, 8, 8)
    with torch.no_grad():
        for v in range(2):
            alone = vae.decode(latents[0, v] / vae.config.scaling_factor, num_frames=3).sample
            torch.testing.assert_close(grid[0, v], alone)


def test_encode_grid_keeps_the_grid_layout():
    codec = tiny_vae_codec()
    images = torch.rand(1, 2, 3, 3, 8, 8) * 2 - 1
    latents = encode_grid(codec, images)
    assert latents.shape == (1, 2, 3, 4, 4, 4)
    torch.testing.assert_close(latents[0, 1, 2], codec.encode(images[0, 1, 2][None])[0])


def test_pixel_codec_round_trip_is_exact_for_every_level():
    levels = np.arange(256, dtype=np.uint8)
    image = np.stack(np.meshgrid(levels, levels, indexing="ij") + [levels[::-1, None].repeat(256, 1)], axis=-1)
    codec = PixelCodec()
    back = to_uint8(codec.decode(codec.encode(to_model_range(image)[None]), num_frames=1))[0]
    assert np.array_equal(back, image)


def test_guidance_above_one_changes_the_sample_and_is_deterministic():
    codec = tiny_vae_codec()
    torch.manual_seed(2)
    model = trained_like(SP4DModel(branch_config=MultiViewUNet.tiny_config()), seed=2).eval()
    pipe = SP4DPipeline(model, codec)
    video, elevation, azimuth, _ = video_and_cameras(views=2)
    embeddings = torch.randn(1, 2, 16)

    def sample(scale: float):
        return pipe(video, elevation, azimuth, embeddings, num_inference_steps=3, guidance_scale=scale,
                    generator=torch.Generator().manual_seed(5))

    plain, guided, again = sample(1.0), sample(2.5), sample(2.5)
    assert not np.array_equal(plain.rgb, guided.rgb) and not np.array_equal(plain.parts, guided.parts)
    assert np.array_equal(guided.rgb, again.rgb) and np.array_equal(guided.parts, again.parts)


def test_guidance_schedules_are_the_reference_guiders():
    """LinearPredictionGuider(max 2, 48 images) of sv4d2 and SpatiotemporalPredictionGuider(1.5, 2.5) of sv4d2_8views."""
    linear = guidance_scales(12, 4, 2.0)
    assert linear.shape == (12, 4) and linear[0, 0] == 1.0 and linear[-1, -1] == 2.0
    assert torch.allclose(linear.flatten(), torch.linspace(1.0, 2.0, 48))
    st = guidance_scales(5, 8, 2.5, 1.5, "spatiotemporal")
    # 0.5 x a frame ramp (0 .. 1) plus 0.5 x a triangle over views (0 at both ends, 6/7 at views 3 and 4)
    assert torch.isclose(st[0, 0], torch.tensor(1.5)) and torch.isclose(st[-1, 0], torch.tensor(2.0))
    assert torch.isclose(st[-1, 3], torch.tensor(1.5 + 0.5 + 0.5 * 6 / 7)) and torch.allclose(st[0], st[0].flip(0))
    with pytest.raises(ModelInputError):
        guidance_scales(2, 2, 2.0, schedule="cosine")


def test_karras_sigmas_match_the_reference_discretization():
    sigmas = karras_sigmas(50)
    assert len(sigmas) == 51 and sigmas[-1] == 0
    assert torch.isclose(sigmas[0], torch.tensor(700.0)) and torch.isclose(sigmas[-2], torch.tensor(0.002))
    assert (sigmas[:-1] > sigmas[1:]).all()


def script_starts(frames: int, window: int, variant: str) -> list[int]:
    """``t0_list`` of simple_video_sample_4d2.py (generative-models 08c19d0), with its clamp."""
    starts = range(0, frames, window) if variant == "sv4d2" else range(0, frames - window + 1, window - 1)
    return [min(t0, frames - window) for t0 in starts]


def covers_from_generated_anchors(frames: int, window: int, starts: list[int]) -> bool:
    done = set()
    for index, t0 in enumerate(starts):
        if index > 0 and t0 not in done:
            return False
        done.update(range(t0, t0 + window))
    return done == set(range(frames))


@pytest.mark.parametrize("window", [2, 3, 5, 12])
def test_clips_start_where_the_sampling_script_starts_them(window):
    for frames in range(window, 40):
        starts = chunk_starts(frames, window)
        assert covers_from_generated_anchors(frames, window, starts), (frames, starts)
        for variant in ("sv4d2", "sv4d2_8views"):
            script = script_starts(frames, window, variant)
            if covers_from_generated_anchors(frames, window, script):
                assert starts == script, (frames, variant, starts, script)
    # The script's defaults: 21 input frames, sv4d2 (T = 12) and sv4d2_8views (T = 5).
    assert chunk_starts(21, 12) == [0, 9] and chunk_starts(21, 5) == [0, 4, 8, 12, 16]
    with pytest.raises(ModelInputError):
        chunk_starts(8, 1)


def pixel_pipeline(seed: int = 3, **kwargs) -> SP4DPipeline:
    torch.manual_seed(seed)
    config = MultiViewUNet.tiny_config(in_channels=6, out_channels=3, reference_channels=3)
    model = trained_like(SP4DModel(branch_config=config), seed=seed).eval()
    return SP4DPipeline(model, PixelCodec(), sigma_max=80.0, **kwargs)


def test_a_long_video_is_generated_in_clips_anchored_on_generated_frames():
    """5 frames in clips of 3 (starts 0 and 2): the first clip is the one-clip sample of frames 0-2
    without reference views; the second is anchored on frame 2 of every view as the first generated
    it (the input frame for view 0), and its frames replace frames 2-4."""
    pipe = pixel_pipeline()
    ids = block_part_ids(3, 5, 16, n_parts=3)
    rgb, _ = block_videos(ids, block_palette(3))
    video = rgb[:1]
    elevation, azimuth = torch.full((1, 3), 5.0), torch.tensor([[0.0, 120.0, 240.0]])
    calls = []
    forward = pipe.model.forward

    def spy(*args, **kwargs):
        calls.append((args[0].shape[2], kwargs["reference_latents"], kwargs["part_reference_latents"]))
        return forward(*args, **kwargs)

    pipe.model.forward = spy
    chunked = pipe(video, elevation, azimuth, num_inference_steps=2, generator=torch.Generator().manual_seed(0), window=3)
    assert [frames for frames, _, _ in calls] == [3] * 4
    assert all(ref is None and part_ref is None for _, ref, part_ref in calls[:2])
    first = pipe(video[:, :3], elevation, azimuth, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(chunked.rgb[:, :, :2], first.rgb[:, :, :2]) and np.array_equal(chunked.parts[:, :, :2], first.parts[:, :, :2])
    assert not np.array_equal(chunked.parts[:, :, 2], first.parts[:, :, 2])  # frame 2 generated again
    _, reference, part_reference = calls[2]
    # The anchors are the first clip's decoded floats; `first` holds them rounded to 8 bits.
    torch.testing.assert_close(reference, to_model_range(first.rgb[:, :, 2]), rtol=0, atol=0.5 / 127.5 + 1e-6)
    torch.testing.assert_close(part_reference, to_model_range(first.parts[:, :, 2]), rtol=0, atol=0.5 / 127.5 + 1e-6)
    assert torch.equal(reference[:, 0], to_model_range(video[:, 2]))
    assert np.array_equal(chunked.rgb[:, 0], video)  # the input view, as given


def test_the_input_view_is_returned_as_given_and_its_parts_are_generated():
    pipe = pixel_pipeline()
    video, elevation, azimuth, _ = video_and_cameras(views=3)
    out = pipe(video, elevation, azimuth, num_inference_steps=2, generator=torch.Generator().manual_seed(1))
    assert out.rgb.shape == (1, 3, 2, 16, 16, 3) and np.array_equal(out.rgb[:, 0], video)
    assert not np.array_equal(out.rgb[:, 1], video) and out.parts[:, 0].any()


def test_embeddings_come_from_the_image_encoder_or_a_documented_zero_context():
    torch.manual_seed(0)
    encoder = OpenCLIPImageEncoder(**OpenCLIPImageEncoder.tiny_config()).eval()
    with_encoder, without = pixel_pipeline(image_encoder=encoder), pixel_pipeline()
    video, elevation, azimuth, _ = video_and_cameras(views=2)
    embeddings = frame_embeddings(encoder, to_model_range(video))
    assert embeddings.shape == (1, 2, 16) and embeddings.abs().sum() > 0

    def sample(pipe, *given):
        return pipe(video, elevation, azimuth, *given, num_inference_steps=2, generator=torch.Generator().manual_seed(2))

    encoded, explicit = sample(with_encoder), sample(without, embeddings)
    assert np.array_equal(encoded.rgb, explicit.rgb) and np.array_equal(encoded.parts, explicit.parts)
    zero, explicit_zero = sample(without), sample(without, torch.zeros(1, 1, 16))
    assert np.array_equal(zero.parts, explicit_zero.parts)
    assert not np.array_equal(zero.parts, encoded.parts)
