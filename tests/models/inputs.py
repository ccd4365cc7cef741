"""Tiny model inputs for the tests: random latents and a synthetic colour-encoded part video batch."""

from __future__ import annotations

import numpy as np
import torch

from models.unet import MultiViewUNet
from models.vae import to_model_range
from pipelines.build.colour import encode_palette, encode_part_image
from schemas.parts import ColourRules

# Albedo of each part in the RGB video (unlike the part colours), and the backdrop.
ALBEDO = np.array([[200, 60, 50], [60, 180, 70], [70, 90, 210], [220, 200, 60]], dtype=np.uint8)
BACKDROP = np.array([128, 128, 128], dtype=np.uint8)


def block_part_ids(n_views: int, n_frames: int, size: int, n_parts: int) -> np.ndarray:
    """int16 [V, F, size, size]: one square block per part; blocks move with the frame and shift with the view."""
    ids = np.full((n_views, n_frames, size, size), -1, dtype=np.int16)
    block = size // 4
    for v in range(n_views):
        for f in range(n_frames):
            for p in range(n_parts):
                y = (block * p + f) % (size - block)
                x = (2 * block * p + block * v + 2 * f) % (size - block)
                ids[v, f, y : y + block, x : x + block] = p
    return ids


def block_palette(n_parts: int) -> np.ndarray:
    centroids = np.stack([np.linspace(0.1, 0.9, n_parts), np.linspace(0.9, 0.1, n_parts), np.full(n_parts, 0.5)], axis=1)
    return encode_palette(centroids, ColourRules())


def block_videos(ids: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB videos and colour-encoded part videos [V, F, H, W, 3] for part ids [V, F, H, W]."""
    rgb = np.where((ids >= 0)[..., None], ALBEDO[ids.clip(0)], BACKDROP)
    return rgb.astype(np.uint8), encode_part_image(ids, palette)


def pixel_batch(n_views: int = 2, n_frames: int = 2, size: int = 16, n_parts: int = 3) -> dict:
    """A one-sample training batch in pixel space (the identity codec): latents are images in [-1, 1]."""
    ids = block_part_ids(n_views, n_frames, size, n_parts)
    palette = block_palette(n_parts)
    rgb, parts = block_videos(ids, palette)
    return {
        "rgb_latents": to_model_range(rgb)[None],
        "part_latents": to_model_range(parts)[None],
        "cond_latents": to_model_range(rgb[0])[None],  # the input video is view 0
        "image_embeddings": torch.zeros(1, 1, 16),
        "elevation": torch.full((1, n_views), 10.0),
        "azimuth": torch.arange(n_views, dtype=torch.float32)[None] * (360.0 / n_views),
        "part_masks": torch.from_numpy(ids.astype(np.int64))[None],
        "palette": palette,
        "video": rgb[0][None],
    }


def pixel_unet_config(**overrides) -> dict:
    """The tiny configuration for 3-channel pixel-space "latents"."""
    return MultiViewUNet.tiny_config(in_channels=6, out_channels=3, reference_channels=3, **overrides)


def random_inputs(batch: int = 1, views: int = 2, frames: int = 3, size: int = 8, seed: int = 0) -> dict:
    """Random UNet inputs for the tiny latent configuration (4 latent channels)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(batch, views, frames, 4, size, size, generator=g),
        "timestep": torch.full((batch,), 0.3),
        "cond_latents": torch.randn(batch, frames, 4, size, size, generator=g),
        "encoder_hidden_states": torch.randn(batch, 1, 16, generator=g),
        "elevation": torch.full((batch, views), 10.0),
        "azimuth": torch.linspace(0, 270, views).expand(batch, views).clone(),
    }


def trained_like(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Give the layers the reference zero-initialises (output convolutions, residual and attention
    output projections, BiDiFuse's last layers) small random values, as a trained checkpoint has:
    otherwise the network's output is identically zero and says nothing about its wiring."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=g) * scale)
    return model
