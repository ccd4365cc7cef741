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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from models.errors import ModelInputError
from models.losses import EDMPreconditioning
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


@dataclass
class SP4DSample:
    rgb: np.ndarray  # uint8 [B, V, F, H, W, 3]
    parts: np.ndarray  # uint8 [B, V, F, H, W, 3], colour-encoded part maps


class SP4DPipeline:
    """``SP4DPipeline(model, codec)(video, elevation, azimuth, image_embeddings)``.

    ``codec`` is the shared frozen VAE (:class:`models.vae.VAECodec`) or, for pixel-space models,
    :class:`models.vae.PixelCodec`. Image embeddings (per-frame OpenCLIP in SV4D 2.0,
    :func:`models.image_encoder.frame_embeddings`) are computed by the caller.
    """

    def __init__(self, model: SP4DModel, codec: LatentCodec, sigma_max: float = 700.0, sigma_min: float = 0.002):
        self.model = model
        self.codec = codec
        self.sigma_max, self.sigma_min = sigma_max, sigma_min
        self.edm = EDMPreconditioning(1.0)

    @torch.no_grad()
    def __call__(
        self,
        video: np.ndarray | torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        image_embeddings: torch.Tensor,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        guidance_scale: float = 1.0,
        min_guidance_scale: float = 1.0,
        guidance_schedule: Schedule = "linear",
        reference_views: np.ndarray | torch.Tensor | None = None,
        reference_parts: np.ndarray | torch.Tensor | None = None,
    ) -> SP4DSample:
        """Generate ``V = elevation.shape[1]`` views of an input video.

        ``video`` uint8 [B, F, H, W, 3]; ``elevation``, ``azimuth`` degrees relative to the input
        view, [B, V] or [B, V, F]; ``image_embeddings`` [B, F, D] (or [B, 1, D]);
        ``reference_views`` / ``reference_parts`` uint8 [B, V, H, W, 3]: the first frame of each
        generated view, when known (SV4D 2.0 anchors every clip after the first on them); absent,
        they are masked as for the first clip. ``guidance_scale`` 1 is plain conditional sampling.
        """
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
        cond = self._encode(video.flatten(0, 1)).reshape(batch, frames, -1, *self._latent_size(video))
        shape = (batch, views, frames, *cond.shape[2:])
        references = [
            None if images is None else self._encode(to_model_range(images).flatten(0, 1)).reshape(batch, views, *cond.shape[2:])
            for images in (reference_views, reference_parts)
        ]
        embeddings = image_embeddings.to(device, dtype)
        scales = guidance_scales(frames, views, guidance_scale, min_guidance_scale, guidance_schedule)
        guided = not torch.all(scales == 1.0)
        scales = scales.T.reshape(1, views, frames, 1, 1, 1).to(device)  # [F, V] -> [B, V, F, ...]

        sigmas = karras_sigmas(num_inference_steps, self.sigma_min, self.sigma_max).to(device)
        start = torch.sqrt(1.0 + sigmas[0] ** 2)
        rgb = torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * start
        part = torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * start
        conditional = (cond, embeddings, elevation.to(device), azimuth.to(device), *references)
        for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
            rgb_denoised, part_denoised = self._denoise(rgb, part, sigma, conditional, dtype)
            if guided:
                zero = (torch.zeros_like(cond), torch.zeros_like(embeddings), *conditional[2:4])
                zero += tuple(None for _ in references)
                rgb_u, part_u = self._denoise(rgb, part, sigma, zero, dtype)
                rgb_denoised = rgb_u + scales * (rgb_denoised - rgb_u)
                part_denoised = part_u + scales * (part_denoised - part_u)
            rgb = rgb + (next_sigma - sigma) * (rgb - rgb_denoised) / sigma
            part = part + (next_sigma - sigma) * (part - part_denoised) / sigma

        rgb_images = to_uint8(decode_grid(self.codec, rgb))
        part_images = to_uint8(decode_grid(self.codec, part))
        return SP4DSample(rgb=rgb_images, parts=part_images)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Conditioning latents as the reference feeds them: unscaled (VAE mode)."""
        return unscaled(self.codec, self.codec.encode(images.to(self.model.device))).to(self.model.dtype)

    def _latent_size(self, video: torch.Tensor) -> tuple[int, int]:
        return video.shape[-2] // self.codec.downscale, video.shape[-1] // self.codec.downscale

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
