"""``kp20k train`` and ``kp20k evaluate``: the training flows run in this process.

Like ``kp20k build``, they run on Prefect's ephemeral local API, or on the server named by
``PREFECT_API_URL`` (then the runs, logs and artifacts show in its UI). ``kp20k train`` started again
with the same arguments resumes the run from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flows.commands import add_config_flags, completed_result, config_from_flags
from flows.prefect_settings import apply_prefect_settings

# The demo: the tiny model in pixel space, small enough for two CPU cores.
DEMO_TRAIN = {"max_steps": 100, "rgb_steps": 50, "checkpoint_every": 25, "n_views": 2, "n_frames": 2}

_TRAIN_FLAGS = {
    "max_steps": ("--steps", int, "optimiser steps in all"),
    "rgb_steps": ("--rgb-steps", int, "phase 1: steps of the RGB branch alone"),
    "checkpoint_every": ("--checkpoint-every", int, None),
    "batch_size": ("--batch-size", int, None),
    "gradient_accumulation_steps": ("--grad-accum", int, "batches per optimiser step"),
    "learning_rate": ("--lr", float, None),
    "n_views": ("--views", int, None),
    "n_frames": ("--frames", int, None),
    "vae_path": ("--vae", str, "local diffusers VAE folder (default: pixel space)"),
    "rgb_init": ("--rgb-init", str, "converted SV4D 2.0 folder (python -m models.convert): both branches start from it"),
    "image_encoder": (
        "--image-encoder",
        str,
        "OpenCLIP image encoder folder (default: the image_encoder/ beside --rgb-init; none for the demo: zero context)",
    ),
    "multi_gpu": ("--multi-gpu", str, "with several GPUs: ddp (default) or fsdp (sharded; for the real size, no EMA)"),
    "mixed_precision": ("--mixed-precision", str, "auto, no, fp16 or bf16"),
    "threads": ("--threads", int, "torch CPU threads"),
    "seed": ("--seed", int, None),
}


def add_training_commands(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train SP4D on the dataset (the train-sp4d flow); rerun to resume")
    train.add_argument("--lance", dest="lance_uri", default="data/kp20k.lance", help="table folder or s3:// URI")
    train.add_argument("--version", type=int, help="samples version to pin (default: the latest)")
    train.add_argument("--config-hash", help="render configuration to train on (default: the only one)")
    train.add_argument("--output", dest="output_dir", default="runs/sp4d", help="folder of the runs")
    train.add_argument("--run-name", help="run folder name (default: samples-v<version>-<config>)")
    add_config_flags(train, _TRAIN_FLAGS, "TrainConfig")
    train.add_argument("--json", action="store_true", help="print the training report as JSON")
    train.set_defaults(handler=run_train_command)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on held-out assets beside baselines (the evaluate-sp4d flow)",
        description="Score a checkpoint on held-out assets: part metrics of its part maps decoded without the "
        "palette (beside the true-palette oracle, an RGB-clustering baseline and the ground-truth ceiling), "
        "per-image and per-sample matching, cross-view and cross-frame consistency, RGB metrics on the novel "
        "views (the input view apart), each with its sample count and a 95% bootstrap interval over assets. "
        "Metric definitions: docs/training.md.",
    )
    evaluate.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    evaluate.add_argument("--baseline", help="a second checkpoint scored on the same items: differences with paired intervals")
    evaluate.add_argument("--split", choices=["val", "train"])
    evaluate.add_argument("--samples", dest="max_samples", type=int, help="items to score (default 8)")
    evaluate.add_argument("--steps", dest="inference_steps", type=int, help="sampler steps (default 25)")
    evaluate.add_argument("--seed", type=int)
    evaluate.add_argument("--lance", dest="lance_uri", help="score on another copy of the table")
    evaluate.add_argument("--version", type=int, help="samples version (default: the one the checkpoint trained on)")
    evaluate.add_argument("--lpips", dest="lpips_path", help="TorchScript LPIPS network")
    evaluate.add_argument("--clip", dest="clip_path", help="TorchScript CLIP image encoder")
    evaluate.add_argument("--i3d", dest="i3d_path", help="TorchScript I3D detector for FVD")
    evaluate.add_argument("--sam2", dest="sam2_path", help="SAM 2 weights for the segmentation baseline (default weights/sam2)")
    evaluate.add_argument(
        "--fvd-min-videos", dest="fvd_min_videos", type=int,
        help="compute FVD only from this many videos a side (default 512: fewer say 'not computed: N videos, need M')",
    )
    evaluate.add_argument("--fvd-min-frames", dest="fvd_min_frames", type=int, help="compute FVD only on videos this long (default 16)")
    evaluate.add_argument("--report-dir", help="where the JSON and markdown go (default <run>/evaluations)")
    evaluate.add_argument("--json", action="store_true", help="print the report JSON")
    evaluate.set_defaults(handler=run_evaluate_command)


def _fields(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def run_train_command(args: argparse.Namespace) -> int:
    apply_prefect_settings()  # before anything imports Prefect: it reads its settings once
    from pipelines.train.checkpoints import RunError

    try:
        config = DEMO_TRAIN | config_from_flags(args, _TRAIN_FLAGS, "TrainConfig")
        from flows.train import (  # Prefect and torch load only for this command
            parse_config,
            train_sp4d,
        )

        parse_config(config)
    except (RunError, ValueError) as exc:  # ValueError: --config is not a JSON object
        print(f"kp20k train: {exc}", file=sys.stderr)
        return 2
    state = train_sp4d(
        lance_uri=args.lance_uri,
        version=args.version,
        config_hash=args.config_hash,
        output_dir=args.output_dir,
        run_name=args.run_name,
        config=config,
        return_state=True,
    )
    report = completed_result(state, "kp20k train")
    if report is None:
        return 1
    if args.json:
        print(report.model_dump_json())
        return 0
    resumed = f"resumed at step {report.start_step}" if report.resumed_from else "new run"
    print(f"train-sp4d: {report.run_dir} ({resumed}), step {report.final_step}, last loss {report.last_losses.get('loss', float('nan')):.4f}")
    print(f"Dataset: {report.dataset.lance_uri} samples v{report.dataset.version}; checkpoints: {report.run_dir}/checkpoints")
    print(f"Watch: tensorboard --logdir {report.run_dir}/logs")
    print(f"Evaluate: kp20k evaluate {report.run_dir}")
    return 0


def run_evaluate_command(args: argparse.Namespace) -> int:
    apply_prefect_settings()  # before anything imports Prefect: it reads its settings once
    from pipelines.train.checkpoints import RunError

    fields = (
        "split", "max_samples", "inference_steps", "seed", "lance_uri", "version",
        "lpips_path", "clip_path", "i3d_path", "sam2_path", "fvd_min_videos", "fvd_min_frames",
    )
    config = _fields(args, fields)
    try:
        from flows.evaluate import evaluate_sp4d, parse_config

        parse_config(config)
    except RunError as exc:
        print(f"kp20k evaluate: {exc}", file=sys.stderr)
        return 2
    state = evaluate_sp4d(
        checkpoint=args.checkpoint, baseline=args.baseline, config=config, report_dir=args.report_dir, return_state=True
    )
    result = completed_result(state, "kp20k evaluate")
    if result is None:
        return 1
    if args.json:
        print(result.comparison.model_dump_json())
        return 0
    print(open(result.markdown_path).read())
    print(f"Report: {result.json_path}")
    return 0
