"""Time and peak memory of one SP4D training step, and parameter counts.

    python benchmarks/model_step.py --config tiny --device cpu
    python benchmarks/model_step.py --config sv4d --device cuda      # 576x576 -> 72x72, 4 views x 12 frames, bf16

A step is forward and backward of both branches (diffusion losses + contrastive part loss) and an
AdamW update, on random latents of the real shapes. On CUDA the weights stay fp32 and the step runs
under bf16 autocast; the real configuration uses gradient checkpointing unless told not to. Without
the device, the real configuration is built on the ``meta`` device and only its parameters counted.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.losses import training_step  # noqa: E402
from models.sp4d import SP4DModel  # noqa: E402
from models.unet import MultiViewUNet  # noqa: E402

SHAPES = {  # views, frames, latent size, VAE downscale
    "tiny": (2, 2, 8, 8),
    "sv4d": (4, 12, 72, 8),
}


def parameter_counts(model: SP4DModel) -> dict[str, int]:
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    view = sum(p.numel() for n, p in model.rgb_branch.named_parameters() if ".view_" in n)
    return {
        "rgb branch": count(model.rgb_branch),
        "  of which view attention": view,
        "part branch": count(model.part_branch),
        "BiDiFuse": count(model.bidifuse),
        "total": count(model),
    }


def random_batch(config: dict, views: int, frames: int, size: int, downscale: int, device: str) -> dict:
    channels = config["out_channels"]
    latents = lambda *shape: torch.randn(*shape, device=device)  # noqa: E731
    return {
        "rgb_latents": latents(1, views, frames, channels, size, size),
        "part_latents": latents(1, views, frames, channels, size, size),
        "cond_latents": latents(1, frames, config["in_channels"] - channels, size, size),
        "image_embeddings": latents(1, 1, config["cross_attention_dim"]),
        "elevation": torch.full((1, views), 10.0, device=device),
        "azimuth": torch.linspace(0, 360, views + 1, device=device)[None, :views],
        # Part masks at pixel resolution, as the dataset gives them; 8 parts.
        "part_masks": torch.randint(-1, 8, (1, views, frames, size * downscale, size * downscale), device=device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    parser.add_argument("--no-checkpointing", action="store_true", help="no gradient checkpointing for sv4d")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = MultiViewUNet.sv4d_config() if args.config == "sv4d" else MultiViewUNet.tiny_config()
    views, frames, size, downscale = SHAPES[args.config]
    print(f"config {args.config}: {views} views x {frames} frames, {size}x{size} latents, device {args.device}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")

    with torch.device("meta"):
        counts = parameter_counts(SP4DModel(branch_config=config))
    for name, value in counts.items():
        print(f"  {name:28s} {value / 1e6:10.2f} M parameters")
    if args.config == "sv4d" and args.device == "cpu":
        print("the real configuration is timed on CUDA only; parameters counted on the meta device")
        return

    torch.manual_seed(0)
    model = SP4DModel(branch_config=config).to(args.device).train()
    if args.config == "sv4d" and not args.no_checkpointing:
        model.enable_gradient_checkpointing()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = random_batch(config, views, frames, size, downscale, args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with autocast:
            losses = training_step(model, batch)
        losses["loss"].backward()
        optimiser.step()

    step()  # warm-up: allocator, kernels, optimiser state
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    print(f"training step: {seconds * 1000:.1f} ms (mean of {args.steps})")
    if args.device == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB")


if __name__ == "__main__":
    main()
