"""``kp20k fit4d``: fit a dynamic 3D asset with its kinematic parts to a sample (the fit-4d flow, in this process)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from flows.commands import add_config_flags, completed_result, config_from_flags
from flows.prefect_settings import apply_prefect_settings

EPILOG = """examples:
  kp20k render arm.glb --out arm --views 8 --frames 4 --resolution 48
  kp20k fit4d arm --out arm-4d                                 # every view and frame
  kp20k fit4d arm --out arm-4d --train-views 0,1,2,4,5,6 --train-frames 0,1,3   # hold some out
  kp20k fit4d --lance data/kp20k.lance --version 3 --limit 4 --out runs/fit4d    # one folder per sample

The asset folder: gaussians.safetensors (the parameters), asset.json (cameras, palette, time range,
settings), turntable.gif (RGB | parts while turning), contact_sheet.png (fitted over true; held-out
views and frames marked *). Format and method: docs/fit4d.md.
"""

_FLAGS = {
    "steps": ("--steps", int, "optimiser steps (default 300)"),
    "n_gaussians": ("--gaussians", int, "primitives drawn from the visual hull (default 1500)"),
    "batch": ("--batch", int, "images per step (default 4)"),
    "static_fraction": ("--static-fraction", float, "share of steps on the reference frame alone (default 0.25)"),
    "visibility_falloff": ("--visibility-falloff", float, "down-weight views away from the input view, 0..1 "
                           "(default 0; about 0.5 for generated samples)"),
    "device": ("--device", str, "torch device (default cpu)"),
    "renderer": ("--renderer", str, "auto, torch or gsplat (gsplat needs CUDA and the package)"),
    "threads": ("--threads", int, "torch CPU threads (default 1: fastest at 32-64 px)"),
    "seed": ("--seed", int, None),
}


def add_fit4d_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit4d",
        help="fit a dynamic 3D asset with its parts to a sample's views and frames (the fit-4d flow)",
        description="Fit 3D Gaussians that carry part labels, moved by one rigid motion per kinematic part, to "
        "the RGB, alpha and part videos of SAMPLE (a folder written by `kp20k render --out`, or a generated "
        "sample written the same way), or to samples of a Lance table. Writes the asset to --out (replaced only "
        "when it is a previous fit). Runs the fit-4d Prefect flow on the ephemeral local API (or PREFECT_API_URL).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("samples", nargs="*", metavar="SAMPLE", help="sample folder(s): rgb/, parts/, alpha/, sample.json")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the asset folder (one sample), or the folder of one asset folder per sample (several)")
    parser.add_argument("--lance", dest="lance_uri", help="fit samples of this table instead (or as well)")
    parser.add_argument("--version", type=int, help="table version to pin (default: the latest)")
    parser.add_argument("--sample-id", dest="sample_ids", action="append", help="a sample of the table (repeatable)")
    parser.add_argument("--limit", type=int, help="without --sample-id: the first N samples by id")
    parser.add_argument("--train-views", help="comma-separated views to fit (default: all); the rest are held out")
    parser.add_argument("--train-frames", help="comma-separated frames to fit (default: all)")
    add_config_flags(parser, _FLAGS, "FitConfig")
    parser.add_argument("--json", action="store_true", help="print the flow's report as JSON")
    parser.set_defaults(handler=run_fit4d_command)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    config = config_from_flags(args, _FLAGS, "FitConfig")
    for field, text in (("train_views", args.train_views), ("train_frames", args.train_frames)):
        if text is not None:
            try:
                config[field] = [int(part) for part in text.split(",")]
            except ValueError:
                raise ValueError(f"--{field.replace('_', '-')} takes comma-separated grid indices, like 0,1,3; got {text!r}")
    return config


def run_fit4d_command(args: argparse.Namespace) -> int:
    if not args.samples and not args.lance_uri:
        print("kp20k fit4d: give a SAMPLE folder, or --lance URI for samples of a table", file=sys.stderr)
        return 2
    apply_prefect_settings()  # before anything imports Prefect: it reads its settings once
    from pydantic import ValidationError

    from flows.fit4d import fit_4d, parse_config

    try:
        config = _config(args)
        parse_config(config)
    except (ValueError, ValidationError) as exc:  # ValidationError is a ValueError; named for the reader
        print(f"kp20k fit4d: {exc}", file=sys.stderr)
        return 2
    state = fit_4d(samples=args.samples, lance_uri=args.lance_uri, version=args.version, sample_ids=args.sample_ids,
                   limit=args.limit, out=args.out, config=config, return_state=True)
    report = completed_result(state, "kp20k fit4d")
    if report is None:
        return 1
    if args.json:
        print(report.model_dump_json())
    for outcome in report.outcomes:
        if outcome.ok and not args.json:
            print(f"{outcome.sample}: fitted in {outcome.fit_seconds:.1f} s ({outcome.n_gaussians} primitives) -> {outcome.out}")
        elif not outcome.ok:
            print(f"kp20k fit4d: {outcome.sample} not fitted: {outcome.error}", file=sys.stderr)
    return 1 if report.failed else 0
