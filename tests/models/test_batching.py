"""From a real Lance table, through the dataset, to a training step of the model."""

from __future__ import annotations

import math

import pytest
import torch

from models.batching import model_batch
from models.errors import ModelInputError
from models.losses import training_step
from models.sp4d import SP4DModel
from models.vae import PixelCodec
from pipelines.dataset import KinematicPartsDataset, collate
from pipelines.store import DatasetStore
from pipelines.synthetic_samples import synthetic_sample
from schemas.render import RenderSpec
from tests.models.inputs import pixel_unet_config


def test_dataset_items_become_a_training_batch(tmp_path):
    spec = RenderSpec(n_views=4, n_frames=3, resolution=16)
    DatasetStore(str(tmp_path)).write_samples([synthetic_sample(f"{i:064x}", spec=spec, n_parts=3, seed=i) for i in range(2)])
    dataset = KinematicPartsDataset(str(tmp_path), n_views=2, n_frames=2)
    items = collate([dataset[0], dataset[1]])

    batch = model_batch(items, PixelCodec(), torch.zeros(2, 1, 16))
    assert batch["rgb_latents"].shape == batch["part_latents"].shape == (2, 2, 2, 3, 16, 16)
    assert torch.equal(batch["cond_latents"], items["rgb"][:, 0])  # view 0 is the input video
    assert torch.equal(batch["part_masks"], items["part_ids"])
    # The dataset's cameras are radians, as the model takes them: view 0 at azimuth 0.
    assert batch["azimuth"][:, 0].abs().max() < 1e-6 and batch["azimuth"].abs().max() < 2 * math.pi

    torch.manual_seed(0)
    losses = training_step(SP4DModel(branch_config=pixel_unet_config()), batch, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["contrastive"] > 0


def test_incomplete_dataset_batch_is_refused():
    with pytest.raises(ModelInputError) as error:
        model_batch({"rgb": torch.zeros(1, 1, 1, 3, 4, 4)}, PixelCodec(), torch.zeros(1, 1, 16))
    assert error.value.reason == "missing_field" and "part_ids" in str(error.value)
