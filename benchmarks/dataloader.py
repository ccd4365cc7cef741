"""Samples/s from a Lance table into training tensors, with 0, 1 and 2 DataLoader workers.

Builds a table of synthetic samples in a temporary folder (no Blender), then times one pass of
:class:`~pipelines.dataset.KinematicPartsDataset` through :func:`~pipelines.dataset.data_loader` per
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

from pipelines.dataset import KinematicPartsDataset, data_loader
from pipelines.store import DatasetStore
from pipelines.synthetic_samples import synthetic_sample
from schemas.render import RenderSpec

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


if __name__ == "__main__":
    run(parse())
