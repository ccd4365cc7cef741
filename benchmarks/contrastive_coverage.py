"""Part coverage for the contrastive loss: ``models.losses.part_coverage`` against the one-hot
formulation it replaced (``F.adaptive_avg_pool2d(one_hot(masks))``), time and peak memory.

    python benchmarks/contrastive_coverage.py                      # 4 views x 12 frames, 576 px masks, 72 px features, 16 parts
    python benchmarks/contrastive_coverage.py --size 256 --parts 8

Each formulation runs in its own child process (so peak RSS is its own), on the same masks, after a
warm-up; the one-hot run is the baseline and the ratios are against it, measured in the same run.
The inputs (masks) are counted in both; the figure printed is the peak RSS above the process's RSS
once the masks exist.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def child(method: str, images: int, size: int, feature_size: int, parts: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    from models.losses import part_coverage

    torch.set_num_threads(1)
    masks = torch.randint(-1, parts, (images, size, size), generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def one_hot() -> torch.Tensor:
        onehot = F.one_hot(masks.clamp_min(0), parts).permute(0, 3, 1, 2).float() * (masks >= 0)[:, None]
        return F.adaptive_avg_pool2d(onehot, (feature_size, feature_size))

    def scattered() -> torch.Tensor:
        return part_coverage(masks, parts, (feature_size, feature_size))

    run = one_hot if method == "one_hot" else scattered
    result = run()
    started = time.perf_counter()
    for _ in range(repeats):
        result = run()
    seconds = (time.perf_counter() - started) / repeats
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mib": (peak - before) / 1024, "checksum": float(result.double().sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=576, help="mask resolution (px)")
    parser.add_argument("--feature-size", type=int, default=72, help="feature resolution of the contrastive layer")
    parser.add_argument("--parts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["one_hot", "scatter"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    images = args.views * args.frames
    if args.child:
        print(json.dumps(child(args.child, images, args.size, args.feature_size, args.parts, args.repeats)))
        return
    results = {}
    for method in ("one_hot", "scatter"):
        command = [sys.executable, __file__, "--child", method] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "child"
        ]
        results[method] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    base, new = results["one_hot"], results["scatter"]
    print(f"{images} masks of {args.size} px -> {args.feature_size} px features, {args.parts} parts, one thread")
    for name, r in results.items():
        print(f"  {name:8s} {r['seconds'] * 1000:9.1f} ms  peak +{r['peak_mib']:8.1f} MiB  (checksum {r['checksum']:.3f})")
    print(f"  part_coverage vs one-hot: time {new['seconds'] / base['seconds']:.2f}x, peak memory {new['peak_mib'] / max(base['peak_mib'], 1e-9):.3f}x")


if __name__ == "__main__":
    main()
