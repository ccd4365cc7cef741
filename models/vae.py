"""The shared, frozen image codec: RGB videos and colour-encoded part videos go through the same one.

The VAE is held outside :class:`models.sp4d.SP4DModel` (by the sampling pipeline and by whoever
precomputes training latents): it is frozen, shared by both branches, and need not be saved with
every checkpoint. Two codecs share one small interface:

- :class:`VAECodec` wraps a diffusers ``AutoencoderKL`` or SVD's ``AutoencoderKLTemporalDecoder``
  (latents scaled by the VAE's ``scaling_factor``, encoded with the posterior mode);
- :class:`PixelCodec` is the identity: the "latents" are the images in [-1, 1]. Tests use it (no
  pretrained VAE can be downloaded here), and a pixel-space model could.

Images are float ``[N, 3, H, W]`` in [-1, 1]; grids are ``[B, V, F, ...]``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder

from models.errors import ModelInputError


class LatentCodec(Protocol):
    latent_channels: int
    downscale: int  # image size / latent size

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor: ...


class PixelCodec:
    """Identity codec: pixel-space diffusion on [-1, 1] images."""

    latent_channels = 3
    downscale = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        return latents


class VAECodec:
    """A diffusers VAE as the codec; ``decode`` hands ``num_frames`` to SVD's temporal decoder."""

    def __init__(self, vae: AutoencoderKL | AutoencoderKLTemporalDecoder):
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = vae.config.latent_channels
        self.downscale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = vae.config.scaling_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(device=self.vae.device, dtype=self.vae.dtype)
        return self.vae.encode(images).latent_dist.mode() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, num_frames: int) -> torch.Tensor:
        latents = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.scaling_factor
        if isinstance(self.vae, AutoencoderKLTemporalDecoder):
            return self.vae.decode(latents, num_frames=num_frames).sample
        return self.vae.decode(latents).sample


def encode_grid(codec: LatentCodec, images: torch.Tensor) -> torch.Tensor:
    """[B, V, F, 3, H, W] images in [-1, 1] -> [B, V, F, C, h, w] latents."""
    latents = codec.encode(images.flatten(0, 2))
    return latents.reshape(*images.shape[:3], *latents.shape[1:])


def decode_grid(codec: LatentCodec, latents: torch.Tensor) -> torch.Tensor:
    """[B, V, F, C, h, w] latents -> [B, V, F, 3, H, W] images (frames innermost, as SVD's decoder expects)."""
    images = codec.decode(latents.flatten(0, 2), num_frames=latents.shape[2])
    return images.reshape(*latents.shape[:3], *images.shape[1:])


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float32 [..., 3, H, W] in [-1, 1]."""
    images = torch.as_tensor(np.asarray(images))
    if images.dtype != torch.uint8:
        raise ModelInputError("bad_dtype", f"expected uint8 images [..., H, W, 3], got {images.dtype}")
    return (images.float() / 127.5 - 1.0).movedim(-1, -3)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3], rounded to the nearest level."""
    scaled = ((images.float().clamp(-1, 1) + 1.0) * 127.5).round()
    return scaled.movedim(-3, -1).to(torch.uint8).cpu().numpy()


def unscaled(codec: LatentCodec, latents: torch.Tensor) -> torch.Tensor:
    """Latents without the VAE's ``scaling_factor``: SV4D 2.0 conditions on raw VAE latents (its
    conditioner's encoders run with scale 1) while it denoises scaled ones."""
    return latents / getattr(codec, "scaling_factor", 1.0)
