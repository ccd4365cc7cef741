"""What the trustworthy evaluation costs per sample, against the palette decoding it replaces.

    .venv/bin/python benchmarks/evaluation_scoring.py [--views 4 --frames 12 --parts 12 --sizes 64 256 --repeats 3]

One sample of ``views x frames`` part maps (the synthetic disc of ``--parts`` sectors, encoded with
the project's colour code, plus Gaussian noise of 6 units a channel as generated maps have), timed
at each size (best of ``--repeats``):

- baseline: decoding with the true palette (``decode_with_palette``), what the evaluation did before;
- palette-free decoding (``decode_by_clustering``);
- part metrics with per-image matching (``part_metrics_grid``, unchanged);
- sequence-level matching and consistency (``part_metrics_sequence`` + ``part_consistency``);
- the RGB-clustering baseline (``rgb_clustering_parts`` on the noisy maps as stand-in frames);
- palette-free decoding of uniform noise (what an untrained part branch emits: the worst case).

Prints one line per step with its time and its ratio to the baseline of the same size and run,
then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from models.metrics import part_consistency, part_metrics_grid, part_metrics_sequence  # noqa: E402
from pipelines.build.colour import encode_part_image  # noqa: E402
from pipelines.evaluate.baselines import rgb_clustering_parts  # noqa: E402
from pipelines.evaluate.decoding import decode_by_clustering, decode_with_palette  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402
from tests.synthetic_samples import palette_for, part_grid  # noqa: E402


def best_of(repeats: int, step) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--parts", type=int, default=12)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    summary = []
    for size in args.sizes:
        truth = part_grid(args.views, args.frames, size, args.parts)
        palette = palette_for(args.parts, RenderSpec(n_views=2, n_frames=2, resolution=32))
        noisy = encode_part_image(truth, palette) + np.random.default_rng(0).normal(0, 6, (*truth.shape, 3))
        noisy = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        clustered = decode_by_clustering(noisy)
        noise = np.random.default_rng(1).integers(0, 256, noisy.shape, dtype=np.uint8)
        steps = {
            "palette decoding (baseline)": lambda: decode_with_palette(noisy, palette),
            "palette-free decoding": lambda: decode_by_clustering(noisy),
            "per-image part metrics": lambda: part_metrics_grid(clustered, truth),
            "sequence matching + consistency": lambda: (part_metrics_sequence(clustered, truth), part_consistency(clustered, truth)),
            "RGB-clustering baseline": lambda: rgb_clustering_parts(noisy),
            "palette-free decoding of pure noise": lambda: decode_by_clustering(noise),
        }
        times = {name: best_of(args.repeats, step) for name, step in steps.items()}
        base = times["palette decoding (baseline)"]
        for name, seconds in times.items():
            print(f"{args.views}x{args.frames} @ {size} px  {name:34s} {seconds * 1000:9.1f} ms  {seconds / base:6.2f}x baseline")
        summary.append({"size": size, "views": args.views, "frames": args.frames, "parts": args.parts, "seconds": times})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
