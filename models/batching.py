"""From a batch of the dataset (:mod:`pipelines.dataset`) to the batch :func:`models.losses.training_step` takes."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from models.errors import ModelInputError
from models.vae import LatentCodec, encode_grid


def model_batch(items: Mapping[str, Any], codec: LatentCodec, image_embeddings: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encode a collated dataset batch with the shared codec.

    ``items`` holds ``rgb`` and ``parts`` [B, V, F, 3, H, W] in [-1, 1], ``part_ids`` [B, V, F, H, W]
    and ``cameras`` with ``elevation`` / ``azimuth`` [B, V] in radians. View 0 is the input video (the
    dataset keeps the stored view 0 first), so its latents are the conditioning. ``image_embeddings``
    [B, S, D] (CLIP of the input video in SV4D) come from the caller.
    """
    missing = [key for key in ("rgb", "parts", "part_ids", "cameras") if key not in items]
    if missing:
        raise ModelInputError("missing_field", f"dataset batch lacks {missing}")
    rgb_latents = encode_grid(codec, items["rgb"])
    return {
        "rgb_latents": rgb_latents,
        "part_latents": encode_grid(codec, items["parts"]),
        "cond_latents": rgb_latents[:, 0],
        "image_embeddings": image_embeddings,
        "elevation": items["cameras"]["elevation"].float(),
        "azimuth": items["cameras"]["azimuth"].float(),
        "part_masks": items["part_ids"],
    }
