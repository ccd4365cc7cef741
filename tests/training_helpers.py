"""Shared pieces of the training and evaluation tests: a tiny real VAE on disk, tiny tables, tiny configs."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from pipelines.build.store import DatasetStore
from pipelines.train.config import TrainConfig
from schemas.render import RenderSpec
from tests.synthetic_samples import synthetic_sample

# 16 px pixel space: the smallest grid the render spec allows and SSIM accepts; fast on one thread.
SYNTHETIC_SPEC = RenderSpec(n_views=2, n_frames=2, resolution=16)


def write_tiny_vae(folder: Path, seed: int = 0) -> Path:
    """A real diffusers AutoencoderKL (random weights, 2x downscale, 4 latent channels) saved as a folder."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    vae.save_pretrained(folder)
    return folder


def asset_sha(index: int) -> str:
    return f"{index:064x}"


def synthetic_store(uri: str, n_assets: int, spec: RenderSpec = SYNTHETIC_SPEC, first: int = 0) -> DatasetStore:
    """A store with one synthetic sample per asset (assets ``first .. first + n_assets - 1``)."""
    store = DatasetStore(uri)
    store.write_samples(
        synthetic_sample(asset_sha(i), spec=spec, n_parts=2 + i % 3, seed=i) for i in range(first, first + n_assets)
    )
    return store


def tiny_config(**overrides) -> TrainConfig:
    """A few steps of the tiny model on one thread, checkpoints every 2 steps, phase 2 from step 3."""
    values = dict(
        max_steps=6,
        rgb_steps=3,
        checkpoint_every=2,
        keep_checkpoints=None,
        warmup_steps=2,
        val_fraction=0.25,
        threads=1,
        preview_inference_steps=2,
    )
    return TrainConfig(**(values | overrides))


def build_tiny_dataset(root: Path, n_assets: int = 3) -> str:
    """Build ``n_assets`` procedural assets with the real build flow (Blender, Ray) at the tiny test
    grid, once per folder; returns the table URI. Needs a Prefect API and Ray (the flow fixtures)."""
    from flows.build import build_kinematicparts20k
    from tests.flows.conftest import TINY_RENDER

    lance = str(root / "kp20k.lance")
    done = root / "built"
    if not done.is_file():
        state = build_kinematicparts20k(
            source={"kind": "procedural", "count": n_assets, "folder": str(root / "assets")},
            render=TINY_RENDER,
            lance_uri=lance,
            cache_dir=str(root / "cache"),
            pool_size=2,
            return_state=True,
        )
        assert state.is_completed(), state.message
        done.write_text(lance)
    return lance


def held_out_seed(lance: str, val_fraction: float) -> int:
    """The first split seed that leaves both a training and a held-out asset."""
    from pipelines.build.dataset import split_of

    shas = set(DatasetStore(lance).read_samples(columns=["sha256"]).column("sha256").to_pylist())
    for seed in range(1000):
        splits = {split_of(sha, val_fraction, seed) for sha in shas}
        if splits == {"train", "val"}:
            return seed
    raise AssertionError(f"no split seed keeps both splits non-empty for {len(shas)} assets")
