"""Sampling as SV4D 2.0's released script does it: an input video and cameras -> multi-view RGB
videos and colour-encoded part videos.

Decoding part videos into part ids is evaluation's business (:mod:`pipelines.evaluate.decoding`):
the model knows nothing of palettes.

The sampler is the reference's ``EulerEDMSampler`` (no churn) on ``EDMDiscretization`` (Karras
sigmas from ``sigma_max`` 700 to 0.002, rho 7, then 0), starting from ``randn * sqrt(1 + sigma_max^2)``,
with the denoiser's v-prediction preconditioning (:class:`models.losses.EDMPreconditioning`, as in
training). Guidance is the reference's: the network runs on the unconditional input (image
embeddings, input-video latents and reference views all zero; cameras kept) and the conditional
one, and ``D = D_u + scale * (D_c - D_u)`` with one scale per image (:func:`guidance_scales`):
``"linear"`` ramps from ``min_guidance_scale`` to ``guidance_scale`` over the ``F x V`` images in
(frame, view) order (``LinearPredictionGuider``, sv4d2: 1 -> 2), ``"spatiotemporal"`` is
``SpatiotemporalPredictionGuider`` (sv4d2_8views: 1.5 -> 2.5). A scale of 1 everywhere skips the
unconditional pass. Both SP4D branches are guided with the same scales.

View 0 is the input view: the condition, not a target. Its RGB is the input video's latents, clean,
before every network call (as in training, :func:`models.losses.with_input_view`), and the returned
RGB of view 0 is the input as given; its part video is generated. Videos longer than ``window``
frames are generated clip by clip, each later clip anchored on a frame generated before
(:func:`chunk_starts`), as the script's loop over ``t0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.errors import ModelInputError
from models.image_encoder import OpenCLIPImageEncoder, frame_embeddings
from models.losses import EDMPreconditioning, with_input_view
from models.sp4d import SP4DModel
from models.vae import LatentCodec, decode_grid, to_model_range, to_uint8, unscaled

Schedule = Literal["linear", "spatiotemporal"]


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0) -> torch.Tensor:
    """The reference's ``EDMDiscretization`` with a final 0: ``steps + 1`` noise levels, descending."""
    ramp = torch.linspace(0, 1, steps)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def guidance_scales(frames: int, views: int, max_scale: float, min_scale: float = 1.0, schedule: Schedule = "linear") -> torch.Tensor:
    """One guidance scale per image, ``[F, V]`` (the reference's guiders over ``F * V`` images in
    (frame, view) order)."""
    if schedule == "linear":
        return torch.linspace(min_scale, max_scale, frames * views).reshape(frames, views)
    if schedule == "spatiotemporal":
        values = torch.linspace(0, 1, views)
        triangle = 2 * (values - torch.floor(values + 0.5)).abs()
        unit = torch.linspace(0, 1, frames)[:, None] * 0.5 + triangle[None, :] * 0.5
        return unit * (max_scale - min_scale) + min_scale
    raise ModelInputError("bad_config", f"unknown guidance schedule {schedule!r}: 'linear' or 'spatiotemporal'")


def chunk_starts(frames: int, window: int) -> list[int]:
    """First frames of the clips that cover ``frames`` frames ``window`` at a time, as SV4D 2.0's
    sampling script walks a long input (``t0`` in ``simple_video_sample_4d2.py``): each clip after the
    first starts on a frame already generated (its anchor, the clip's reference views), the last one
    is moved back to end on the last frame. This is the script's ``sv4d2_8views`` list
    (``range(0, n - T + 1, T - 1)``) and its ``sv4d2`` list (``range(0, n, T)`` with the last start
    clamped to ``n - T``) wherever those cover every frame from generated anchors; the script fails
    (``sv4d2``, an anchor not generated yet) or drops the last frames (``sv4d2_8views``) elsewhere."""
    if window < 2:
        raise ModelInputError("bad_config", f"window must be at least 2 frames (an anchor frame and one more), got {window}")
    if window >= frames:
        return [0]
    starts = []
    for start in range(0, frames, window - 1):
        starts.append(min(start, frames - window))
        if starts[-1] + window >= frames:
            return starts
    return starts


@dataclass
class SP4DSample:
    rgb: np.ndarray  # uint8 [B, V, F, H, W, 3]; view 0 is the input video as given
    parts: np.ndarray  # uint8 [B, V, F, H, W, 3], colour-encoded part maps


class SP4DPipeline:
    """``SP4DPipeline(model, codec, image_encoder=None)(video, elevation, azimuth)``.

    ``codec`` is the shared frozen VAE (:class:`models.vae.VAECodec`) or, for pixel-space models,
    :class:`models.vae.PixelCodec`. Image embeddings are SV4D 2.0's per-frame OpenCLIP embeddings of the
    input video, computed with ``image_encoder`` (:func:`models.image_encoder.load_image_encoder`)
    unless the caller passes them; with neither, the context is one zero token (the unconditional
    embedding: the tiny demo models, trained without an encoder, see exactly that).
    """

    def __init__(
        self,
        model: SP4DModel,
        codec: LatentCodec,
        sigma_max: float = 700.0,
        sigma_min: float = 0.002,
        image_encoder: OpenCLIPImageEncoder | None = None,
    ):
        self.model = model
        self.codec = codec
        self.sigma_max, self.sigma_min = sigma_max, sigma_min
        self.image_encoder = image_encoder
        self.edm = EDMPreconditioning(1.0)

    @torch.no_grad()
    def __call__(
        self,
        video: np.ndarray | torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        image_embeddings: torch.Tensor | None = None,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        guidance_scale: float = 1.0,
        min_guidance_scale: float = 1.0,
        guidance_schedule: Schedule = "linear",
        reference_views: np.ndarray | torch.Tensor | None = None,
        reference_parts: np.ndarray | torch.Tensor | None = None,
        window: int | None = None,
    ) -> SP4DSample:
        """Generate ``V = elevation.shape[1]`` views of an input video; view 0 is the input view.

        ``video`` uint8 [B, F, H, W, 3]; ``elevation``, ``azimuth`` degrees relative to the input
        view, [B, V] or [B, V, F]; ``image_embeddings`` [B, F, D] (or [B, 1, D]), by default computed
        from ``video`` (see the class docstring). View 0 is the condition: the input video sits clean
        in the grid at every step and is returned as given; its part video is generated.
        ``reference_views`` / ``reference_parts`` uint8 [B, V, H, W, 3]: the first frame of each view,
        when known; absent, they are masked as for the script's first clip. ``window``: frames per
        clip; a longer video is generated clip by clip (:func:`chunk_starts`), each later clip anchored
        on its first frame as generated by the clip before (decoded and encoded again, as the script
        does). None: one clip. ``guidance_scale`` 1 is plain conditional sampling.
        """
        given = np.asarray(video.cpu() if isinstance(video, torch.Tensor) else video)
        video = to_model_range(video)
        if video.ndim != 5 or elevation.ndim not in (2, 3) or elevation.shape[0] != video.shape[0]:
            raise ModelInputError(
                "bad_shape",
                f"video must be uint8 [B, F, H, W, 3] and elevation [B, V(, F)]; got {tuple(video.shape)} "
                f"(as [B, F, 3, H, W]) and {tuple(elevation.shape)}",
            )
        device, dtype = self.model.device, self.model.dtype
        batch, frames = video.shape[:2]
        views = elevation.shape[1]
        embeddings = self._embeddings(video, image_embeddings).to(device, dtype)
        inputs = self.codec.encode(video.flatten(0, 1).to(device)).float()
        inputs = inputs.reshape(batch, frames, *inputs.shape[1:])  # scaled latents of the input video
        rgb = torch.zeros(batch, views, *inputs.shape[1:], device=device)
        part = torch.zeros_like(rgb)
        references = [None if images is None else self._encode(to_model_range(images)) for images in (reference_views, reference_parts)]
        sigmas = karras_sigmas(num_inference_steps, self.sigma_min, self.sigma_max).to(device)
        length = frames if window is None else min(window, frames)
        for index, start in enumerate(chunk_starts(frames, length) if window is not None else [0]):
            clip = slice(start, start + length)
            if index > 0:  # anchored on frame `start` of every view, generated by an earlier clip
                anchors = decode_grid(self.codec, torch.stack([rgb, part])[:, :, :, start : start + 1].flatten(0, 1))
                anchors = anchors.clamp(-1, 1)[:, :, 0].reshape(2, batch, views, *anchors.shape[-3:])
                rgb_anchor = torch.cat([video[:, start, None].to(anchors), anchors[0, :, 1:]], dim=1)
                references = [self._encode(rgb_anchor), self._encode(anchors[1])]
            cameras = [c[:, :, clip] if c.ndim == 3 else c for c in (elevation, azimuth)]
            context = embeddings[:, clip] if embeddings.shape[1] == frames else embeddings
            scales = guidance_scales(length, views, guidance_scale, min_guidance_scale, guidance_schedule)
            rgb[:, :, clip], part[:, :, clip] = self._sample_clip(
                inputs[:, clip], context, cameras, references, scales, sigmas, generator, dtype
            )

        rgb_images = np.concatenate([given[:, None], to_uint8(decode_grid(self.codec, rgb[:, 1:]))], axis=1) if views > 1 else given[:, None]
        part_images = to_uint8(decode_grid(self.codec, part))
        return SP4DSample(rgb=rgb_images, parts=part_images)

    def _sample_clip(self, inputs, embeddings, cameras, references, scales, sigmas, generator, dtype):
        """One clip: the reference's Euler EDM loop with guidance; the input view (scaled latents
        ``inputs`` [B, T, C, h, w]) replaces view 0 before every network call."""
        batch, frames = inputs.shape[:2]
        views = cameras[0].shape[1]
        shape = (batch, views, frames, *inputs.shape[2:])
        cond = unscaled(self.codec, inputs).to(dtype)
        guided = not torch.all(scales == 1.0)
        scales = scales.T.reshape(1, views, frames, 1, 1, 1).to(inputs.device)  # [T, V] -> [B, V, T, ...]
        start = torch.sqrt(1.0 + sigmas[0] ** 2)
        rgb = torch.randn(shape, generator=generator, device=inputs.device, dtype=torch.float32) * start
        part = torch.randn(shape, generator=generator, device=inputs.device, dtype=torch.float32) * start
        conditional = (cond, embeddings, *(c.to(inputs.device) for c in cameras), *references)
        for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
            rgb = with_input_view(rgb, inputs)
            rgb_denoised, part_denoised = self._denoise(rgb, part, sigma, conditional, dtype)
            if guided:
                zero = (torch.zeros_like(cond), torch.zeros_like(embeddings), *conditional[2:4], None, None)
                rgb_u, part_u = self._denoise(rgb, part, sigma, zero, dtype)
                rgb_denoised = rgb_u + scales * (rgb_denoised - rgb_u)
                part_denoised = part_u + scales * (part_denoised - part_u)
            rgb = rgb + (next_sigma - sigma) * (rgb - rgb_denoised) / sigma
            part = part + (next_sigma - sigma) * (part - part_denoised) / sigma
        return with_input_view(rgb, inputs), part

    def _embeddings(self, video: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
        if given is not None:
            return given
        if self.image_encoder is not None:
            encoder = self.image_encoder
            return frame_embeddings(encoder, video.to(encoder.device)).float()
        return torch.zeros(video.shape[0], 1, self.model.config.branch_config["context_dim"])

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Conditioning latents as the reference feeds them: unscaled (VAE mode); [B, V, 3, H, W] -> [B, V, C, h, w]."""
        latents = unscaled(self.codec, self.codec.encode(images.flatten(0, 1).to(self.model.device)))
        return latents.reshape(*images.shape[:2], *latents.shape[1:]).to(self.model.dtype)

    def _denoise(self, rgb, part, sigma, conditioning, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cond, embeddings, elevation, azimuth, reference, part_reference = conditioning
        out = self.model(
            (self.edm.c_in(sigma) * rgb).to(dtype),
            (self.edm.c_in(sigma) * part).to(dtype),
            self.edm.c_noise(sigma),
            cond,
            embeddings,
            elevation,
            azimuth,
            reference_latents=reference,
            part_reference_latents=part_reference,
        )
        return self.edm.denoised(out.rgb.float(), rgb, sigma), self.edm.denoised(out.part.float(), part, sigma)
