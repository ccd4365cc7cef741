"""Sampling: an input video and cameras -> multi-view RGB videos and colour-encoded part videos.

Decoding part videos into part ids is evaluation's business (:mod:`pipelines.evaluate.decoding`):
the model knows nothing of palettes.

The sampler is diffusers' ``EDMEulerScheduler`` with v-prediction; its preconditioning is the one
:class:`models.losses.EDMPreconditioning` trains with (a test keeps them equal). Each branch steps
its own copy of the scheduler; the model sees both at the same noise level, as in training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import EDMEulerScheduler

from models.errors import ModelInputError
from models.sp4d import SP4DModel
from models.vae import LatentCodec, decode_grid, to_model_range, to_uint8


def edm_scheduler(sigma_data: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 700.0) -> EDMEulerScheduler:
    """SVD's sampling schedule: Karras sigmas from 700 to 0.002, v-prediction, c_noise = log(sigma) / 4."""
    return EDMEulerScheduler(
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigma_data=sigma_data,
        sigma_schedule="karras",
        prediction_type="v_prediction",
    )


@dataclass
class SP4DSample:
    rgb: np.ndarray  # uint8 [B, V, F, H, W, 3]
    parts: np.ndarray  # uint8 [B, V, F, H, W, 3], colour-encoded part maps


class SP4DPipeline:
    """``SP4DPipeline(model, codec)(video, elevation, azimuth, image_embeddings)``.

    ``codec`` is the shared frozen VAE (:class:`models.vae.VAECodec`) or, for pixel-space models,
    :class:`models.vae.PixelCodec`. Image embeddings (CLIP in SV4D) are computed by the caller.
    """

    def __init__(self, model: SP4DModel, codec: LatentCodec, scheduler: EDMEulerScheduler | None = None):
        self.model = model
        self.codec = codec
        self.scheduler = scheduler or edm_scheduler()

    @torch.no_grad()
    def __call__(
        self,
        video: np.ndarray | torch.Tensor,
        elevation: torch.Tensor,
        azimuth: torch.Tensor,
        image_embeddings: torch.Tensor,
        num_inference_steps: int = 25,
        generator: torch.Generator | None = None,
    ) -> SP4DSample:
        """Generate ``V = elevation.shape[1]`` views of an input video.

        ``video`` uint8 [B, F, H, W, 3]; ``elevation``, ``azimuth`` degrees [B, V] or [B, V, F];
        ``image_embeddings`` [B, S, D].
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
        cond = self.codec.encode(video.flatten(0, 1).to(device))
        cond = cond.reshape(batch, frames, *cond.shape[1:]).to(dtype)
        shape = (batch, views, frames, *cond.shape[2:])
        conditioning = (cond, image_embeddings.to(device, dtype), elevation.to(device), azimuth.to(device))

        rgb_scheduler = copy.deepcopy(self.scheduler)
        rgb_scheduler.set_timesteps(num_inference_steps, device=device)
        part_scheduler = copy.deepcopy(rgb_scheduler)
        noise_scale = rgb_scheduler.init_noise_sigma
        rgb = torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * noise_scale
        part = torch.randn(shape, generator=generator, device=device, dtype=torch.float32) * noise_scale
        for t in rgb_scheduler.timesteps:
            out = self.model(
                rgb_scheduler.scale_model_input(rgb, t).to(dtype),
                part_scheduler.scale_model_input(part, t).to(dtype),
                t,
                *conditioning,
            )
            rgb = rgb_scheduler.step(out.rgb.float(), t, rgb).prev_sample
            part = part_scheduler.step(out.part.float(), t, part).prev_sample

        rgb_images = to_uint8(decode_grid(self.codec, rgb))
        part_images = to_uint8(decode_grid(self.codec, part))
        return SP4DSample(rgb=rgb_images, parts=part_images)
