"""What deciding kinematic parts from the whole clip costs, and what reusing a stored decision saves.

    .venv/bin/python benchmarks/clip_parts.py [--views 4 --frames 4 --resolution 64 --samples 8]

For each asset (the shared glTF samples when present, then procedural rigs; every clip), on one warm
Blender session, interleaved, best of ``--rounds``:

1. decide: ``render_grid`` with no known part map (the whole clip is measured at the fixed motion
   sampling, then the grid is rendered), what a clip's first render configuration pays;
2. reuse: ``render_grid`` given the stored part map, what every later configuration pays.

Prints one line per clip (seconds and the decision's share of the first render) and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.build.sources.procedural import KINDS, generate_asset  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402

SHARED = REPO.parent / "shared" / "assets" / "gltf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = RenderSpec()
    parser.add_argument("--views", type=int, default=defaults.n_views)
    parser.add_argument("--frames", type=int, default=defaults.n_frames)
    parser.add_argument("--resolution", type=int, default=defaults.resolution)
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--procedural", type=int, default=3, help="procedural rigs besides the shared assets")
    args = parser.parse_args()

    from pipelines.build.blender import clips as clip_ops
    from pipelines.build.blender.render import render_grid
    from pipelines.build.blender.session import BlenderSession

    spec = RenderSpec(n_views=args.views, n_frames=args.frames, resolution=args.resolution,
                      samples=args.samples, threads=args.threads)
    folder = Path(tempfile.mkdtemp(prefix="kp20k-clip-parts-"))
    paths = sorted(SHARED.glob("*.gl*")) if SHARED.is_dir() else []
    paths += [Path(generate_asset(kind, 0, folder).local_path) for kind in KINDS[: args.procedural]]
    rows = []
    with BlenderSession(threads=args.threads) as session:
        for path in paths:
            session.load(path)
            names = [c.name for c in clip_ops.list_clips()]
            for clip in names:
                decide, reuse, decision = [], [], []
                known = None
                for _ in range(args.rounds):
                    for mode in ("decide", "reuse"):
                        session.load(path)
                        started = time.perf_counter()
                        grid = render_grid(session, clip, spec, seed=0, parts=known if mode == "reuse" else None)
                        seconds = time.perf_counter() - started
                        if mode == "decide":
                            decide.append(seconds)
                            decision.append(grid.timings["parts"])
                            known = grid.part_map
                        else:
                            reuse.append(seconds)
                row = {
                    "asset": path.name, "clip": clip, "motion_frames": len(known.motion_frames),
                    "decide_s": min(decide), "reuse_s": min(reuse), "decision_s": min(decision),
                }
                row["decision_share"] = row["decision_s"] / row["decide_s"]
                rows.append(row)
                print(f"{path.name:20s} {clip:10s} {row['motion_frames']:4d} motion frames: first render "
                      f"{row['decide_s']:.3f} s (deciding {row['decision_s']:.3f} s, {row['decision_share']:.0%}), "
                      f"with the stored decision {row['reuse_s']:.3f} s ({row['decide_s'] / row['reuse_s']:.2f}x)",
                      flush=True)
    shutil.rmtree(folder)
    total_decide, total_reuse = sum(r["decide_s"] for r in rows), sum(r["reuse_s"] for r in rows)
    summary = {"spec": spec.model_dump(mode="json"), "rows": rows,
               "first_over_reuse": total_decide / total_reuse,
               "decision_share": sum(r["decision_s"] for r in rows) / total_decide}
    print(f"all clips: first render / with stored decision = {summary['first_over_reuse']:.2f}x; "
          f"deciding is {summary['decision_share']:.0%} of the first render")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
