"""Samples/s from a Lance table into training tensors, with 0, 1 and 2 DataLoader workers.

Builds a table of synthetic samples in a temporary folder (no Blender), then times one pass of
:class:`~pipelines.build.dataset.KinematicPartsDataset` through :func:`~pipelines.build.dataset.data_loader` per
worker count. The first batch of each pass is not timed (spawned workers start and import torch).

Hook for the model step rate: pass ``train_step`` (one optimiser step on a batch) to :func:`run`;
the report then prints the model's steps/s and samples/s beside the loader's, so one can see which
side limits training. Example: ``.venv/bin/python -m benchmarks.dataloader --workers 0 1 2``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any, Callable, Sequence

from pipelines.build.dataset import KinematicPartsDataset, data_loader
from pipelines.build.store import DatasetStore
from schemas.render import RenderSpec
from tests.synthetic_samples import synthetic_sample

TrainStep = Callable[[dict[str, Any]], None]


def write_table(uri: str, n_samples: int, spec: RenderSpec) -> tuple[float, float]:
    """Write ``n_samples`` synthetic samples; returns (MiB of frame packs, seconds the write took)."""
    samples = [synthetic_sample(f"{i:064x}", spec=spec, n_parts=2 + i % 6, seed=i) for i in range(n_samples)]
    start = time.perf_counter()
    DatasetStore(uri).write_samples(samples)
    seconds = time.perf_counter() - start
    return sum(len(s.rgb) + len(s.parts) + len(s.alpha) for s in samples) / 2**20, seconds


def loader_rate(dataset: KinematicPartsDataset, num_workers: int, batch_size: int) -> float:
    """Samples/s over one pass, after the first batch."""
    batches = iter(data_loader(dataset, batch_size=batch_size, num_workers=num_workers, shuffle=True))
    next(batches)
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["sample_id"])
    return count / (time.perf_counter() - start)


def step_rate(train_step: TrainStep, batch: dict[str, Any], repeats: int) -> float:
    """Steps/s of ``train_step`` on one batch, after one warm-up step."""
    train_step(batch)
    start = time.perf_counter()
    for _ in range(repeats):
        train_step(batch)
    return repeats / (time.perf_counter() - start)


def run(args: argparse.Namespace, train_step: TrainStep | None = None) -> dict[str, float]:
    spec = RenderSpec(n_views=args.stored_views, n_frames=args.stored_frames, resolution=args.resolution)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kp20k-bench-") as uri:
        mib, seconds = write_table(uri, args.samples, spec)
        figures["write_mib_per_s"] = mib / seconds
        dataset = KinematicPartsDataset(uri, n_views=args.views, n_frames=args.frames)
        print(
            f"{args.samples} samples, stored {args.stored_views}x{args.stored_frames} at {args.resolution} px "
            f"({mib / args.samples:.2f} MiB of frame packs each); items {args.views} views x {args.frames} frames, "
            f"batch {args.batch_size}"
        )
        print(f"  store write: {figures['write_mib_per_s']:8.1f} MiB/s ({args.samples / seconds:.1f} samples/s)")
        for workers in args.workers:
            rate = loader_rate(dataset, workers, args.batch_size)
            figures[f"loader_samples_per_s_w{workers}"] = rate
            print(f"  loader, {workers} workers: {rate:8.1f} samples/s")
        if train_step is not None:
            batch = next(iter(data_loader(dataset, batch_size=args.batch_size)))
            steps = step_rate(train_step, batch, args.step_repeats)
            figures["model_steps_per_s"] = steps
            print(f"  model step: {steps:8.2f} steps/s = {steps * args.batch_size:8.1f} samples/s")
    return figures


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--stored-views", type=int, default=8)
    parser.add_argument("--stored-frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--step-repeats", type=int, default=5)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------------
# The tiny model's step rate (train-sp4d), printed beside the loader's figures.
#
# One optimiser step of the tiny SP4D model with both branches (phase 2, the costlier one), through
# the training loop's own pieces (DiffusionTrainer, model_inputs). The model sees latents of an
# 8x-downscaling VAE, as with a Stable Video Diffusion VAE and precomputed latents: stand-in latents
# of that shape, since the step's cost does not depend on their values; cameras and part masks
# (contrastive loss) come from the loader's batch.

LATENT_DOWNSCALE = 8
LATENT_CHANNELS = 4


def tiny_model_step(threads: int | None = None) -> TrainStep:
    import torch
    import torch.nn.functional as F

    from models.losses import DiffusionObjective
    from models.sp4d import SP4DModel
    from models.unet import MultiViewUNet
    from pipelines.train.loop import DiffusionTrainer, model_inputs, noise_generator

    if threads:
        torch.set_num_threads(threads)
    config = MultiViewUNet.tiny_config(in_channels=2 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, reference_channels=LATENT_CHANNELS)
    trainer = DiffusionTrainer(SP4DModel(branch_config=config), DiffusionObjective())
    optimizer = torch.optim.AdamW(trainer.parameters(), lr=1e-4)
    steps = iter(range(1 << 62))

    def step(batch: dict[str, Any]) -> None:
        images = batch["rgb"]  # [B, V, F, 3, H, W]
        size = images.shape[-1] // LATENT_DOWNSCALE
        latents = torch.randn(*images.shape[:3], LATENT_CHANNELS, size, size)
        masks = F.interpolate(batch["part_ids"].flatten(0, 2)[:, None].float(), size=(size, size), mode="nearest")
        inputs = model_inputs({**batch, "rgb_latents": latents, "part_latents": latents.clone()}, None, config["context_dim"])
        inputs["part_masks"] = masks[:, 0].long().reshape(*images.shape[:3], size, size)
        losses = trainer(inputs, rgb_only=False, generator=noise_generator(0, next(steps), 0, torch.device("cpu")))
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


if __name__ == "__main__":
    arguments = parse()
    run(arguments, train_step=tiny_model_step(threads=1))
