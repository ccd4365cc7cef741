"""How close the lift (part videos -> rig) comes to the true rigs, beside the naive baseline.

    .venv/bin/python benchmarks/lift_rigs.py [--views 8 --frames 4 --resolution 64 --seeds 2]

Each asset (procedural rigs of every kind, ``--seeds`` each, then the shared real glTF assets when
present, first clip) is rendered with its ground-truth part videos (the renderer's exact part maps,
not a model's), its true rig is read from the scene (``pipelines.build.blender.truth``), and both the
lift and the naive baseline (one bone per part at its centroid, nearest-part rigid skinning) are
measured against it (``pipelines.lift.metrics``: mIoU and ARI of the vertex parts, CD-J2J / J2B / B2B
in MagicArticulate's [-1, 1] units, skinning precision / recall / L1, replay error of the true clip).
Prints one line per asset, the means of both methods side by side, and a JSON summary; with
``--rigs DIR`` the lifted rigs also go into ``DIR/rigs.lance`` with their metrics as columns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.build.sources.procedural import KINDS, generate_asset  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402

SHARED = REPO.parent / "shared" / "assets" / "gltf"
METRICS = ("miou", "ari", "cd_j2j", "cd_j2b", "cd_b2b", "skin_precision", "skin_recall", "skin_l1", "replay_error")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--motion-threshold", type=float, default=0.05, help="frame spacing, as kp20k render")
    parser.add_argument("--seeds", type=int, default=2, help="procedural rigs per kind")
    parser.add_argument("--no-shared", action="store_true", help="leave out the shared real assets")
    parser.add_argument("--rigs", help="also write the lifted rigs, with their metrics, into <RIGS>/rigs.lance")
    args = parser.parse_args()

    from pipelines.build.blender import clips as clip_ops
    from pipelines.build.blender.render import render_grid
    from pipelines.build.blender.session import BlenderSession
    from pipelines.build.blender.truth import true_rig
    from pipelines.lift.export import to_glb
    from pipelines.lift.metrics import rig_metrics
    from pipelines.lift.rig import lift
    from pipelines.lift.table import rig_key, write_rigs
    from pipelines.lift.views import LiftInputError, PartViews
    from pipelines.version import code_version
    from schemas.lift import RigRow

    spec = RenderSpec(n_views=args.views, n_frames=args.frames, resolution=args.resolution, samples=1,
                      denoise=False, motion_threshold=args.motion_threshold)
    folder = Path(tempfile.mkdtemp(prefix="kp20k-lift-rigs-"))
    paths = [Path(generate_asset(kind, seed, folder).local_path) for kind in KINDS for seed in range(args.seeds)]
    if SHARED.is_dir() and not args.no_shared:
        paths += sorted(SHARED.glob("*.gl*"))
    results: dict[str, dict[str, list[float]]] = {"lift": {m: [] for m in METRICS}, "naive": {m: [] for m in METRICS}}
    rows, seconds, rigs = [], {"lift": 0.0, "naive": 0.0}, []
    with BlenderSession() as session:
        for path in paths:
            session.load(path)
            with session.capture():
                clip = clip_ops.list_clips()[0].name
            try:
                grid = render_grid(session, clip, spec, seed=0)
            except Exception as exc:  # noqa: BLE001 - an asset the renderer refuses is named and skipped
                print(f"{path.name:24s} skipped: {exc}")
                continue
            truth = true_rig(session, grid)
            try:
                views = PartViews(grid.part_ids, grid.cameras, grid.part_map.part_names, grid.frame_times, grid.fps,
                                  name=path.stem, clip=clip)
            except LiftInputError as exc:  # e.g. a flat asset seen edge-on: nothing to carve from that view
                print(f"{path.name:24s} skipped: {exc}")
                continue
            line = {"asset": path.name, "clip": clip, "parts": views.n_parts}
            for method in ("lift", "naive"):
                started = time.perf_counter()
                try:
                    rig = lift(views, naive=method == "naive")
                except LiftInputError as exc:
                    print(f"{path.name:24s} {method}: {exc}")
                    break
                seconds[method] += time.perf_counter() - started
                metrics = rig_metrics(rig, truth)
                for m in METRICS:
                    results[method][m].append(getattr(metrics, m))
                line[method] = {m: round(getattr(metrics, m), 4) for m in METRICS} | {"bones": len(rig.skeleton.joints)}
                if args.rigs and method == "lift":
                    source = f"benchmarks/lift_rigs.py:{path.name}"
                    rigs.append(RigRow(rig_id=rig_key(source, path.stem, code_version()), sample_id=path.stem,
                                       source=source, clip=clip, glb=to_glb(rig), summary=rig.summary(),
                                       metrics=metrics, code_version=code_version()))
            else:
                rows.append(line)
                print(f"{path.name:24s} {clip:10s} parts {views.n_parts:2d} bones {line['lift']['bones']:2d}  "
                      + "  ".join(f"{m} {line['lift'][m]:.3f}/{line['naive'][m]:.3f}" for m in METRICS))
    if args.rigs:
        print(f"{write_rigs(args.rigs, rigs)} rigs written to {args.rigs}/rigs.lance")
    means = {method: {m: float(np.mean(v)) for m, v in values.items()} for method, values in results.items()}
    print(f"\nmeans over {len(rows)} assets ({args.views} views x {args.frames} frames, {args.resolution} px), lift vs naive:")
    for m in METRICS:
        better = "lower" if m.startswith("cd_") or m in ("skin_l1", "replay_error") else "higher"
        print(f"  {m:15s} {means['lift'][m]:.3f}  {means['naive'][m]:.3f}   ({better} is better)")
    print(f"  seconds/asset   {seconds['lift'] / max(len(rows), 1):.2f}  {seconds['naive'] / max(len(rows), 1):.2f}")
    print(json.dumps({"spec": spec.model_dump(mode="json"), "means": means, "assets": rows}))


if __name__ == "__main__":
    main()
