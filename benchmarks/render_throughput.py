"""Render throughput: a warm long-lived worker against a fresh Blender process per asset, and what
the part maps cost on top of the RGB render.

    .venv/bin/python benchmarks/render_throughput.py [--assets 6] [--views 4 --frames 4 --resolution 64]

1. Warm: one ``AssetWorker`` (one ``bpy`` import) processes every asset in turn.
2. Fresh: one new Python process per asset that imports ``bpy`` and processes that asset alone
   (objaverse-xl's pattern: a Blender process per object).
3. Part maps: on each asset's loaded scene, the same cells rendered three ways: RGB only, RGB with the
   Material Index pass (what the worker does: part ids for free), and the flat emission recipe as a
   second pass. The extra cost of each is given as a fraction of the RGB-only time (best of 5,
   interleaved).

Same assets (the shared glTF samples when present, then procedural rigs), same settings, first clip of
each asset. Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.build.sources.procedural import KINDS, generate_asset  # noqa: E402
from schemas.assets import AssetRef  # noqa: E402
from schemas.filters import FilterRules  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402

SHARED = REPO.parent / "shared" / "assets" / "gltf"
ROUNDS = 5
FRESH = """
import sys
sys.path.insert(0, {repo!r})
from pipelines.build.worker import AssetWorker
from schemas.assets import AssetRef
from schemas.filters import FilterRules
from schemas.render import RenderSpec
asset = AssetRef.model_validate_json({asset!r})
result = AssetWorker(RenderSpec.model_validate_json({spec!r}), FilterRules()).process(asset, {clips!r})
assert result.samples, result.rejections
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = RenderSpec()
    parser.add_argument("--assets", type=int, default=6, help="number of assets")
    parser.add_argument("--views", type=int, default=defaults.n_views)
    parser.add_argument("--frames", type=int, default=defaults.n_frames)
    parser.add_argument("--resolution", type=int, default=defaults.resolution)
    parser.add_argument("--samples", type=int, default=defaults.samples)
    parser.add_argument("--threads", type=int, default=2, help="Cycles threads (both ways)")
    args = parser.parse_args()
    spec = RenderSpec(n_views=args.views, n_frames=args.frames, resolution=args.resolution, samples=args.samples,
                      threads=args.threads)
    _, startup = _timed(lambda: __import__("bpy"))  # the warm worker's one start-up, charged to its first asset
    with tempfile.TemporaryDirectory(prefix="kp20k-bench-") as tmp:
        assets = _assets(Path(tmp), args.assets)
        clips = [[_first_clip(a)] for a in assets]
        print(f"{len(assets)} assets, {spec.n_views} views x {spec.n_frames} frames at {spec.resolution} px, "
              f"{spec.samples} samples, {spec.threads} threads")
        warm = _warm(assets, clips, spec, startup)
        fresh = _fresh(assets, clips, spec)
        parts = _part_costs(assets, clips, spec)
    warm_total, fresh_total = sum(warm, Cost(0, 0)), sum(fresh, Cost(0, 0))
    summary = {
        "settings": spec.model_dump(include={"n_views", "n_frames", "resolution", "samples", "denoise", "threads"}),
        "assets": len(assets),
        "warm_s_per_asset": {"wall": round(warm_total.wall / len(warm), 3), "cpu": round(warm_total.cpu / len(warm), 3)},
        "fresh_s_per_asset": {"wall": round(fresh_total.wall / len(fresh), 3), "cpu": round(fresh_total.cpu / len(fresh), 3)},
        "speedup": {"wall": round(fresh_total.wall / warm_total.wall, 2), "cpu": round(fresh_total.cpu / warm_total.cpu, 2)},
        "index_pass_extra_cpu": round(parts["index"].cpu / parts["rgb"].cpu - 1.0, 4),
        "flat_pass_extra_cpu": round(parts["flat"].cpu / parts["rgb"].cpu, 4),
        "rgb_cpu_s_per_image": round(parts["rgb"].cpu / parts["images"], 4),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(summary, indent=2))


def _assets(folder: Path, n: int) -> list[AssetRef]:
    refs = []
    for name in ("CesiumMan.glb", "Fox.glb", "RiggedFigure.glb"):
        if (SHARED / name).is_file():
            refs.append(AssetRef(file_identifier=name, source="local", file_type="glb", sha256=name,
                                 local_path=str(SHARED / name)))
    seed = 0
    while len(refs) < n:
        refs.append(generate_asset(KINDS[seed % len(KINDS)], seed, folder))
        seed += 1
    return refs[:n]


def _first_clip(asset: AssetRef) -> str:
    from pipelines.build.blender.probe import probe_asset
    from pipelines.build.blender.session import BlenderSession

    with BlenderSession() as session:
        return probe_asset(session, asset.local_path, asset.sha256).clips[0].name


def _warm(assets: list[AssetRef], clips: list[list[str]], spec: RenderSpec, startup: Cost) -> list[Cost]:
    from pipelines.build.worker import AssetWorker

    worker, cost = _timed(lambda: AssetWorker(spec, FilterRules()))
    seconds = []
    for asset, clip in zip(assets, clips):
        result, used = _timed(lambda: worker.process(asset, clip))
        assert result.samples, result.rejections
        seconds.append(used)
        print(f"warm   {asset.file_identifier:32s} {used.wall:6.2f} s wall {used.cpu:6.2f} s cpu")
    seconds[0] = seconds[0] + startup + cost
    worker.close()
    return seconds


def _fresh(assets: list[AssetRef], clips: list[list[str]], spec: RenderSpec) -> list[Cost]:
    seconds = []
    for asset, clip in zip(assets, clips):
        code = FRESH.format(repo=str(REPO), asset=asset.model_dump_json(), spec=spec.model_dump_json(), clips=clip)
        _, used = _timed(lambda: subprocess.run([sys.executable, "-c", code], check=True, capture_output=True))
        seconds.append(used)
        print(f"fresh  {asset.file_identifier:32s} {used.wall:6.2f} s wall {used.cpu:6.2f} s cpu")
    return seconds


def _part_costs(assets: list[AssetRef], clips: list[list[str]], spec: RenderSpec) -> dict[str, Cost | int]:
    """Costs summed over assets for RGB only, RGB + Material Index, and the flat second pass."""
    import bpy

    from pipelines.build.blender.render import render_flat_part_ids, render_grid
    from pipelines.build.blender.session import BlenderSession

    totals: dict = {"rgb": Cost(0, 0), "index": Cost(0, 0), "flat": Cost(0, 0), "images": 0}
    with BlenderSession(threads=spec.threads) as session, tempfile.TemporaryDirectory() as tmp:
        for asset, (clip,) in zip(assets, clips):
            session.load(asset.local_path)
            grid = render_grid(session, clip, spec, seed=0)
            layer = bpy.context.view_layer
            index, rgb = [], []
            with session.capture():
                for _ in range(ROUNDS):  # interleaved, best of each: other load on the machine hits both
                    layer.use_pass_material_index = True
                    index.append(_timed(lambda: _rerender(grid, Path(tmp) / "cell.exr"))[1])
                    layer.use_pass_material_index = False
                    rgb.append(_timed(lambda: _rerender(grid, Path(tmp) / "cell.exr"))[1])
            flat = [_timed(lambda: render_flat_part_ids(session, grid))[1] for _ in range(ROUNDS)]
            best = {"rgb": Cost.best(rgb), "index": Cost.best(index), "flat": Cost.best(flat)}
            for key, cost in best.items():
                totals[key] = totals[key] + cost
            totals["images"] += grid.n_renders
            print(f"parts  {asset.file_identifier:32s} cpu: rgb {best['rgb'].cpu:6.2f} s  "
                  f"+index {best['index'].cpu - best['rgb'].cpu:+6.3f} s  flat pass {best['flat'].cpu:6.3f} s")
    return totals


def _rerender(grid, output: Path) -> None:
    """The worker's render loop over the grid's cells, on the scene render_grid left set up."""
    import bpy
    import numpy as np

    from pipelines.build.blender.render import each_cell

    bpy.context.scene.render.filepath = str(output)
    for _ in each_cell(grid.cameras, grid.frame_times, grid.normalisation_scale, np.asarray(grid.normalisation_offset)):
        bpy.ops.render.render(write_still=True)


@dataclass(frozen=True)
class Cost:
    """Wall seconds, and CPU seconds of this process and its children (steadier on a shared machine)."""

    wall: float
    cpu: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.wall + other.wall, self.cpu + other.cpu)

    @staticmethod
    def best(costs: list["Cost"]) -> "Cost":
        return Cost(min(c.wall for c in costs), min(c.cpu for c in costs))


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(run):
    wall, cpu = time.perf_counter(), _cpu()
    value = run()
    return value, Cost(time.perf_counter() - wall, _cpu() - cpu)


if __name__ == "__main__":
    main()
