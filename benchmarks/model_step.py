"""Time and peak memory of one SP4D training step (SV4D 2.0 branches), and parameter counts.

    python benchmarks/model_step.py --config tiny --device cpu
    python benchmarks/model_step.py --config sv4d2 --device cuda     # 576x576 -> 72x72, 4 views x 12 frames, bf16

A step is forward and backward of both branches (diffusion losses + contrastive part loss, reference
views and conditioning dropout as in training) and an AdamW update, on random latents of the real
shapes. On CUDA the weights stay fp32 and the step runs under bf16 autocast. Each configuration is
timed with gradient checkpointing off and on, and the ratio printed (the baseline is the run
without checkpointing, measured in the same process). The real configuration on a CPU is only built
on the ``meta`` device and its parameters counted (its fp32 weights and AdamW state need ~64 GB).
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
    "sv4d2": (4, 12, 72, 8),
    "sv4d2_8views": (8, 5, 72, 8),
}


def parameter_counts(model: SP4DModel) -> dict[str, int]:
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    view = sum(p.numel() for n, p in model.rgb_branch.named_parameters() if ".view_" in n)
    frame = sum(p.numel() for n, p in model.rgb_branch.named_parameters() if ".frame_" in n)
    temporal = sum(p.numel() for n, p in model.rgb_branch.named_parameters() if ".temporal_res_block." in n)
    return {
        "rgb branch": count(model.rgb_branch),
        "  of which view attention": view,
        "  of which frame attention": frame,
        "  of which temporal res blocks": temporal,
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
        "reference_latents": latents(1, views, channels, size, size),
        "part_reference_latents": latents(1, views, channels, size, size),
        "image_embeddings": latents(1, frames, config["context_dim"]),
        "elevation": torch.zeros((1, views), device=device),
        "azimuth": torch.linspace(0, 360, views + 2, device=device)[None, 1 : views + 1],
        # Part masks at pixel resolution, as the dataset gives them; 8 parts.
        "part_masks": torch.randint(-1, 8, (1, views, frames, size * downscale, size * downscale), device=device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps, after one warm-up step")
    parser.add_argument("--latent-size", type=int, help="override the latent size (e.g. a small CPU run)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    configs = {
        "tiny": MultiViewUNet.tiny_config(),
        "sv4d2": MultiViewUNet.sv4d2_config(),
        "sv4d2_8views": MultiViewUNet.sv4d2_8views_config(),
    }
    config = configs[args.config]
    views, frames, size, downscale = SHAPES[args.config]
    size = args.latent_size or size
    print(f"config {args.config}: {views} views x {frames} frames, {size}x{size} latents ({size * downscale} px), device {args.device}")
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")

    with torch.device("meta"):
        meta_model = SP4DModel(branch_config=config)
        counts = parameter_counts(meta_model)
    full_config = dict(meta_model.rgb_branch.config)
    for name, value in counts.items():
        print(f"  {name:32s} {value / 1e6:10.2f} M parameters")
    if args.config != "tiny" and args.device == "cpu":
        print("the real configuration is timed on CUDA only (fp32 weights + AdamW state ~64 GB); parameters counted on the meta device")
        print(f"GPU command: python benchmarks/model_step.py --config {args.config} --device cuda")
        return

    batch = random_batch(full_config, views, frames, size, downscale, args.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.device == "cuda")
    results = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = SP4DModel(branch_config=config).to(args.device).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with autocast:
                losses = training_step(model, batch)
            losses["loss"].backward()
            optimiser.step()

        try:
            step()  # warm-up: allocator, kernels, optimiser state
            if args.device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if args.device == "cuda":
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            print(f"checkpointing {'on ' if checkpointing else 'off'}: out of GPU memory")
            del model, optimiser
            torch.cuda.empty_cache()
            continue
        seconds = (time.perf_counter() - start) / args.steps
        if args.device == "cuda":
            memory = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
        else:
            memory = f"peak process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB (whole process so far)"
        results[checkpointing] = seconds
        print(f"checkpointing {'on ' if checkpointing else 'off'}: training step {seconds * 1000:.1f} ms (mean of {args.steps}); {memory}")
        del model, optimiser
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if len(results) == 2:
        print(f"step time with / without checkpointing: {results[True] / results[False]:.2f}x")


if __name__ == "__main__":
    main()
