"""Build overhead: the build flow (Prefect tasks, a Ray pool of workers, shard commits, artifacts)
against a plain Python loop doing the same stages on the same assets, and the speedup from 1 to 2
render workers.

    .venv/bin/python benchmarks/build_overhead.py [--assets 16] [--views 4 --frames 4 --resolution 64 --samples 8]

1. Loop: prefilter, fetch into a cache, one in-process ``AssetWorker`` (one warm Blender), rows
   committed to Lance in shards of 8: no Prefect, no Ray.
2. Flow, 1 worker, own Ray: ``build-kinematicparts20k`` on the same folder, into a fresh table and
   cache, as a run on a fresh machine pays it: task runs, starting and stopping a local Ray, the
   worker's Blender import, artifacts. (Prefect's ephemeral API is started once beforehand: a
   server pays that once, not per run.)
3. Flow, 1 worker, standing Ray: the same, joining a Ray that is already up (a cluster, or
   ``RAY_ADDRESS``), as a production worker does.
4. Flow, 2 workers, standing Ray: ``pool_size=2``; the speedup is 3 over 4 (``--scaling-only``: runs
   3 and 4 alone, e.g. ``--assets 6 --views 8 --frames 8 --resolution 256 --samples 4``, where
   rendering dominates).

Every run renders every asset from scratch. Prints one line per run and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import ray  # noqa: E402
from prefect import flow  # noqa: E402

from flows.build import build_kinematicparts20k, outcome_rows  # noqa: E402
from flows.render_pool import Job, Outcome  # noqa: E402
from pipelines.build.fetch import FetchCache, fetch  # noqa: E402
from pipelines.build.prefilter import prefilter  # noqa: E402
from pipelines.build.sources.local import discover_local  # noqa: E402
from pipelines.build.sources.procedural import generate_assets  # noqa: E402
from pipelines.build.store import DatasetStore  # noqa: E402
from schemas.filters import FilterRules  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402

SHARD = 8


def plain_loop(folder: Path, spec: RenderSpec, work: Path) -> tuple[float, float, int]:
    """(total seconds, seconds until Blender was warm, samples written)."""
    started = time.perf_counter()
    from pipelines.build.worker import (
        AssetWorker,  # imports bpy: part of what the loop pays, as the flow's workers do
    )

    worker = AssetWorker(spec, FilterRules())
    warm = time.perf_counter() - started
    kept, rejections = prefilter(discover_local(folder))
    store = DatasetStore(str(work / "loop.lance"))
    store.write_rejections(rejections)
    cache = FetchCache(work / "loop-cache")
    written, shard = 0, []
    for asset in kept:
        result = worker.process(fetch(asset, cache))
        _, found, row = outcome_rows(Outcome(Job(asset), None, result=result), spec.config_hash())
        shard.append((result.samples, found, row))  # this worker returns its samples: the loop writes them
        if len(shard) == SHARD or asset is kept[-1]:
            written += store.write_samples(s for samples, _, _ in shard for s in samples)
            store.write_rejections(r for _, found, _ in shard for r in found)
            store.write_assets(row for _, _, row in shard if row is not None)
            shard = []
    worker.close()
    return time.perf_counter() - started, warm, written


def flow_run(folder: Path, spec: RenderSpec, work: Path, name: str, workers: int):
    started = time.perf_counter()
    report = build_kinematicparts20k(
        source={"kind": "local", "folder": str(folder)},
        render=spec.model_dump(mode="json"),
        lance_uri=str(work / f"flow-{name}.lance"),
        cache_dir=str(work / f"flow-{name}-cache"),
        pool_size=workers,
        shard_size=SHARD,
    )
    return time.perf_counter() - started, report


@flow(name="warm-up")
def warm_up() -> None:
    """Starts Prefect's ephemeral API (once per process; a server pays it once, not per run)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=16)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--scaling-only", action="store_true", help="only 1 vs 2 workers on a standing Ray (runs 3 and 4)")
    args = parser.parse_args()
    spec = RenderSpec(n_views=args.views, n_frames=args.frames, resolution=args.resolution, samples=args.samples)
    work = Path(tempfile.mkdtemp(prefix="kp20k-build-overhead-"))
    folder = work / "assets"
    generate_assets(args.assets, folder, seed=0)
    warm_up()
    print(f"{args.assets} assets, {spec.n_views}x{spec.n_frames} grid at {spec.resolution} px, {spec.samples} samples; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    loop_rows = None
    if not args.scaling_only:
        loop_s, loop_warm_s, loop_rows = plain_loop(folder, spec, work)
        print(f"plain loop (1 Blender, no Prefect, no Ray): {loop_s:6.1f} s, {loop_rows} samples "
              f"(Blender ready after {loop_warm_s:.1f} s)", flush=True)
    runs = {}
    plan = (("own Ray", 1, False), ("standing Ray", 1, True), ("standing Ray", 2, True))
    for label, workers, standing in plan[1:] if args.scaling_only else plan:
        if standing and not ray.is_initialized():
            ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        seconds, report = flow_run(folder, spec, work, f"{workers}-{label.split()[0]}", workers)
        r = report.render
        runs[label, workers] = (seconds, r.ray_start_s + r.first_worker_s + r.ray_stop_s, r.seconds - r.first_worker_s)
        print(f"flow, {label}, {workers} worker(s): {seconds:6.1f} s, {r.samples_written} samples "
              f"(Ray start {r.ray_start_s:.1f} s, first warm worker {r.first_worker_s:.1f} s, Ray stop {r.ray_stop_s:.1f} s)",
              flush=True)
        loop_rows = r.samples_written if loop_rows is None else loop_rows
        assert r.samples_written == loop_rows, "every run must write the same samples"
    ray.shutdown()
    standing1, standing2 = runs["standing Ray", 1], runs["standing Ray", 2]
    if args.scaling_only:
        print(f"1 -> 2 workers: {standing1[0] / standing2[0]:.2f}x end to end, "
              f"{standing1[2] / standing2[2]:.2f}x from the first warm worker to the end of the render task")
        print(json.dumps({"assets": args.assets, "samples_written": loop_rows, "one_worker_s": round(standing1[0], 2),
                          "two_workers_s": round(standing2[0], 2), "speedup": round(standing1[0] / standing2[0], 2),
                          "speedup_after_warm": round(standing1[2] / standing2[2], 2),
                          "load_average_1min": round(os.getloadavg()[0], 1)}))
        return

    own = runs["own Ray", 1]
    summary = {
        "assets": args.assets,
        "grid": {"views": spec.n_views, "frames": spec.n_frames, "resolution": spec.resolution, "samples": spec.samples},
        "samples_written": loop_rows,
        "loop_s": round(loop_s, 2),
        "flow_own_ray_1_worker_s": round(own[0], 2),
        "flow_standing_ray_1_worker_s": round(standing1[0], 2),
        "flow_standing_ray_2_workers_s": round(standing2[0], 2),
        "overhead_own_ray": round(own[0] / loop_s - 1, 3),
        "overhead_standing_ray": round(standing1[0] / loop_s - 1, 3),
        # Past start-up (a Ray to start, a Blender to warm): what the flow adds per asset.
        "overhead_after_startup": round((own[0] - own[1]) / (loop_s - loop_warm_s) - 1, 3),
        "speedup_1_to_2_workers": round(standing1[0] / standing2[0], 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }
    print(f"flow overhead at 1 worker: {100 * summary['overhead_own_ray']:+.1f}% starting its own Ray, "
          f"{100 * summary['overhead_standing_ray']:+.1f}% on a standing Ray, "
          f"{100 * summary['overhead_after_startup']:+.1f}% after start-up; "
          f"1 -> 2 workers: {summary['speedup_1_to_2_workers']:.2f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
