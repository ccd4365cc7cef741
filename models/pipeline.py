"""Sampling: an input video and cameras -> multi-view RGB videos, part videos and decoded part ids.

The sampler is diffusers' ``EDMEulerScheduler`` with v-prediction; its preconditioning is the one
:class:`models.losses.EDMPreconditioning` trains with (a test keeps them equal). Each branch steps
its own copy of the scheduler; the model sees both at the same noise level, as in training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from diffusers import EDMEulerScheduler

from models.errors import ModelInputError
from models.sp4d import SP4DModel
from models.vae import LatentCodec, decode_grid, to_model_range, to_uint8
from pipelines.colour import BACKGROUND, decode_part_image


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
    part_ids: np.ndarray | None  # int16 [B, V, F, H, W], -1 background or unknown; None without palettes


class SP4DPipeline:
    """``SP4DPipeline(model, codec)(video, elevation, azimuth, image_embeddings, palettes)``.

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
        palettes: Sequence[np.ndarray] | None = None,
        num_inference_steps: int = 25,
        generator: torch.Generator | None = None,
        decode_limit: float | None = None,
    ) -> SP4DSample:
        """Generate ``V = elevation.shape[1]`` views of an input video.

        ``video`` uint8 [B, F, H, W, 3]; ``elevation``, ``azimuth`` degrees [B, V] or [B, V, F];
        ``image_embeddings`` [B, S, D]; ``palettes`` one uint8 [P, 3] palette per sample, to decode
        part ids by nearest colour (:func:`decode_generated_parts`).
        """
        video = to_model_range(video)
        if video.ndim != 5 or elevation.ndim not in (2, 3) or elevation.shape[0] != video.shape[0]:
            raise ModelInputError(
                "bad_shape",
                f"video must be uint8 [B, F, H, W, 3] and elevation [B, V(, F)]; got {tuple(video.shape)} "
                f"(as [B, F, 3, H, W]) and {tuple(elevation.shape)}",
            )
        if palettes is not None and len(palettes) != video.shape[0]:
            raise ModelInputError("missing_palette", f"{len(palettes)} palettes for {video.shape[0]} samples")
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
        part_ids = None
        if palettes is not None:
            part_ids = np.stack(
                [decode_generated_parts(images, np.asarray(p), decode_limit) for images, p in zip(part_images, palettes)]
            )
        return SP4DSample(rgb=rgb_images, parts=part_images, part_ids=part_ids)


def decode_generated_parts(images: np.ndarray, palette: np.ndarray, limit: float | None = None) -> np.ndarray:
    """Part ids int16 [..., H, W] of generated part maps uint8 [..., H, W, 3].

    With ``limit=None`` every pixel takes the nearest of the palette colours and the black
    background, however far: generated colours are never exact. With a ``limit`` it is
    :func:`pipelines.colour.decode_part_image` (pixels farther than ``limit`` from every palette colour
    are unknown, -1).
    """
    if limit is not None:
        return decode_part_image(images, palette, limit=limit)
    with_background = np.vstack([palette, np.zeros((1, 3), np.uint8)])
    ids = decode_part_image(images, with_background, limit=float("inf"))
    ids[ids == len(palette)] = BACKGROUND
    return ids
