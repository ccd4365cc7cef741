"""What the model is compared with in the same report: a training-free baseline and the ceiling.

- :func:`rgb_clustering_parts`: part maps from the RGB frames alone, by the same deterministic
  mean-shift as palette-free decoding (:func:`pipelines.evaluate.decoding.cluster_colours`) run on the
  rendered colours of the whole sample (so one colour is one label in every view and frame). The
  background is the cluster that holds most pixels of the images' borders (renders keep the object
  inside the frame). It segments the true frames of every view, which the model has to generate:
  it sees more than the model does, and knows nothing of parts beyond colour.
- :func:`round_trip`: images through the codec (VAE encode and decode; the identity in pixel
  space) and back to uint8. The ground-truth part maps so passed, then decoded without the palette,
  are what a perfect generator could at best hand to the decoding: the ceiling.
- SAM 2: run only where its weights are on disk; :func:`sam2_status` says why it is not computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.vae import LatentCodec, decode_grid, encode_grid, to_model_range, to_uint8
from pipelines.build.colour import BACKGROUND
from pipelines.evaluate.decoding import cluster_colours
from pipelines.evaluate.learned_metrics import not_computed

# RGB colours vary within a part (shading, texture): a wider kernel than the part code's.
RGB_BANDWIDTH = 16.0
RGB_MERGE_DISTANCE = 32.0


def rgb_clustering_parts(rgb: np.ndarray) -> np.ndarray:
    """Part ids int16 [V, F, H, W] of a sample's RGB frames uint8 [V, F, H, W, 3]; -1 = background."""
    labels = cluster_colours(rgb, bandwidth=RGB_BANDWIDTH, merge_distance=RGB_MERGE_DISTANCE).labels
    border = np.concatenate(
        [labels[..., 0, :].ravel(), labels[..., -1, :].ravel(), labels[..., :, 0].ravel(), labels[..., :, -1].ravel()]
    )
    background = np.bincount(border).argmax()
    ids = np.where(labels == background, BACKGROUND, labels - (labels > background)).astype(np.int16)
    return ids


@torch.no_grad()
def round_trip(codec: LatentCodec, grid: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 [V, F, H, W, 3] -> the same through the codec's encode and decode, uint8."""
    images = to_model_range(grid)[None].to(device)  # [1, V, F, 3, H, W]
    return to_uint8(decode_grid(codec, encode_grid(codec, images)))[0]


def sam2_status(path: str | None) -> str:
    """Why the SAM 2 baseline has no numbers in this report."""
    if path is None:
        return not_computed("no SAM 2 weights path given")
    if not Path(path).exists():
        return not_computed(f"SAM 2 weights not found at {path}")
    return not_computed(f"SAM 2 weights found at {path}, but this project does not run SAM 2 yet (no sam2 package)")
