"""Objaverse-XL at real scale, dry run: discovery + prefilter over annotation tables of 1M / 10M rows,
and a build whose rendering is a stand-in.

    .venv/bin/python benchmarks/scale_dry_run.py [--rows 200000,1000000] [--baseline-rows 100000]
    .venv/bin/python benchmarks/scale_dry_run.py --rows 1000000,10000000 --baseline-rows 1000000   # ~5 min here
    .venv/bin/python benchmarks/scale_dry_run.py --rows "" --baseline-rows 0 --build 1000 [--grid 4x4x64 --sleep 0.05]

1. Writes annotation tables in the released layout (``{dir}/{source}/{source}.parquet``, columns
   fileIdentifier, source, license, fileType, sha256, metadata) with Objaverse-XL's proportions:
   GitHub 55%, Thingiverse 36%, Sketchfab 8%, Smithsonian 0.1%; 15% of rows a rig format (glb, gltf,
   fbx, blend); the licence spellings each source uses; 5% of rows another row's bytes (duplicates,
   across sources and batches); 0.1% bad sha256s. Values are random but seeded.
2. For each size, in a fresh process (so its peak memory is its own): ``stage_candidates`` over
   ``annotation_scan`` (what ``kp20k build --source objaverse-xl --offline`` runs before its first
   download) into an empty store, then, in another fresh process, the same again (a refresh: nothing
   to write). Prints the time and the process's peak RSS (``ru_maxrss``, imports included) for each,
   the candidates, the rejections and the rejections table's versions.
3. Baseline, measured in the same run: the code this replaced (pandas ``read_parquet``, one AssetRef
   per row, the list prefilter, rejections written through ``write_rejections``), loaded from git
   commit ``BASELINE_COMMIT``, at ``--baseline-rows``, and the new code at the same size.

4. ``--build N``: the build flow over N tiny local files, one worker, rendering replaced by
   ``benchmarks/standin_worker.py`` (sleeps ``--sleep`` s, returns one sample of the ``--grid``'s
   size), against a plain loop of the same stages, in a fresh process with its own Prefect home:
   wall times, time to the first sample, driver bytes received per asset, shards, table versions and
   (fragments, versions) after the build's upkeep, the Prefect database's size.

Aims (issue 10): over 10M rows at most 2 min and 1.5 GB, memory flat from 1M to 10M rows; for the
build, orchestration at most 10% over the loop and under 64 KB of driver traffic per asset.
Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BASELINE_COMMIT = "6a20d50"  # main before the streaming prefilter

SOURCES = {"github": 0.55, "thingiverse": 0.36, "sketchfab": 0.08, "smithsonian": 0.001}
LICENCES = {
    "github": ["MIT License", "Apache License 2.0", "GNU General Public License v3.0", "Other", None,
               'BSD 3-Clause "New" or "Revised" License', "Creative Commons Zero v1.0 Universal"],
    "thingiverse": ["Creative Commons - Attribution", "Creative Commons - Attribution - Share Alike",
                    "Creative Commons - Attribution - Non-Commercial", "GNU - GPL", "Public Domain", "BSD License"],
    "sketchfab": ["by", "by-sa", "by-nc", "by-nc-sa", "cc0", "by-nd", "st"],
    "smithsonian": ["CC0"],
}
RIG_TYPES, OTHER_TYPES = ["glb", "gltf", "fbx", "blend"], ["stl", "obj", "ply", "dae", "3ds", "usdz", "abc", "off"]
CHUNK = 500_000  # rows generated and written at a time


def _hex_strings(raw: bytes, width: int) -> pa.Array:
    data = raw.hex().encode()
    n = len(data) // width
    offsets = pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32).tobytes())
    return pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(data)])


def write_tables(folder: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Annotation parquets with ``rows`` rows in all, in the released layout."""
    rng = np.random.default_rng(seed)
    counts = {s: max(1, int(rows * share)) for s, share in SOURCES.items()}
    counts["github"] += rows - sum(counts.values())
    pool = _hex_strings(rng.bytes(32 * 4096), 64)  # earlier bytes that duplicates copy
    for source, n in counts.items():
        path = folder / source / f"{source}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        licences = pa.array(LICENCES[source], pa.string())
        with pq.ParquetWriter(path, pa.schema([(c, pa.string()) for c in
                                               ("fileIdentifier", "source", "license", "fileType", "sha256", "metadata")])) as writer:
            for start in range(0, n, CHUNK):
                m = min(CHUNK, n - start)
                ids = pa.array(np.arange(start, start + m)).cast(pa.string())
                org = pa.array(rng.integers(0, 50_000, m)).cast(pa.string())
                fid = pc.binary_join_element_wise(f"https://{source}.example/org", org, "/repo/blob/0f3c/models/", ids, ".bin", "")
                rig = rng.random(m) < 0.15
                types = np.where(rig, np.array(RIG_TYPES)[rng.integers(0, 4, m)], np.array(OTHER_TYPES)[rng.integers(0, 8, m)])
                sha = _hex_strings(rng.bytes(32 * m), 64)
                copy = rng.random(m) < 0.05
                sha = pc.if_else(pa.array(copy), pc.take(pool, pa.array(rng.integers(0, len(pool), m))), sha)
                bad = rng.random(m) < 0.001
                sha = pc.if_else(pa.array(bad), "0" * 63, sha)
                meta = pc.if_else(pa.array(rng.random(m) < 0.5), '{"github_organization": "org", "github_repo": "repo"}', "{}")
                batch = pa.record_batch([fid, pa.nulls(m, pa.string()).fill_null(source), licences.take(pa.array(rng.integers(0, len(licences), m))),
                                         pa.array(types, pa.string()), sha, meta], schema=writer.schema)
                writer.write_batch(batch)
    return counts


CHILD_NEW = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from pipelines.build.candidates import stage_candidates
from pipelines.build.sources.objaverse_xl import annotation_scan
from pipelines.build.store import DatasetStore
from schemas.prefilter import PrefilterRules
rules, store = PrefilterRules(), DatasetStore({store!r})
t = time.perf_counter()
s = stage_candidates(annotation_scan(Path({annotations!r}), offline=True, file_types=rules.file_types), rules, store,
                     Path({store!r}) / "candidates.parquet")
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "scanned": s.scanned, "accepted": s.accepted, "rejected": s.rejected, "written": s.rejections_written,
                  "rejections_versions": len(store.checkout(table="rejections").versions())}}))
"""

CHILD_OLD = """
import json, resource, subprocess, sys, time, types
from pathlib import Path
sys.path.insert(0, {repo!r})
def old(path, name):
    module = types.ModuleType(name)
    source = subprocess.run(["git", "-C", {repo!r}, "show", {commit!r} + ":" + path], check=True, capture_output=True, text=True).stdout
    exec(compile(source, path, "exec"), module.__dict__)
    return module
from pipelines.build.store import DatasetStore
from schemas.prefilter import PrefilterRules
objaverse, prefilter = old("pipelines/build/sources/objaverse_xl.py", "old_objaverse"), old("pipelines/build/prefilter.py", "old_prefilter")
rules, store = PrefilterRules(), DatasetStore({store!r})
t = time.perf_counter()
assets = objaverse.discover_objaverse(Path({annotations!r}), offline=True, file_types=rules.file_types)
kept, rejections = prefilter.prefilter(assets, rules)
written = store.write_rejections(rejections)
print(json.dumps({{"seconds": time.perf_counter() - t, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "scanned": len(assets), "accepted": len(kept), "rejected": len(rejections), "written": written,
                  "rejections_versions": len(store.checkout(table="rejections").versions())}}))
"""


CHILD_BUILD = """
import json, os, pickle, sys, time
from functools import partial
from pathlib import Path
sys.path[:0] = [{repo!r}, {bench!r}]
from flows.prefect_settings import apply_prefect_settings
apply_prefect_settings()
import flows.build as build
from flows.render_pool import Job, Outcome
from pipelines.build.fetch import FetchCache, fetch
from pipelines.build.prefilter import prefilter
from pipelines.build.sources.local import discover_local
from pipelines.build.store import DatasetStore, TABLES
from schemas.render import RenderSpec
from standin_worker import SleepingWorker

spec, sleep_s, work = RenderSpec(**{spec!r}), {sleep!r}, Path({work!r})
assets = sorted(discover_local(work / "assets"), key=lambda a: a.file_identifier)

# The plain loop: the same stages, one stand-in worker, commits in shards of the same size.
t = time.perf_counter()
store, cache, worker = DatasetStore(str(work / "loop.lance")), FetchCache(work / "loop-cache"), SleepingWorker(spec, sleep_s)
kept, rejections = prefilter(assets)
store.write_rejections(rejections)
shard, first_loop = [], None
for asset in kept:
    result = worker.process(fetch(asset, cache))
    first_loop = first_loop or time.perf_counter() - t
    shard.append(build.outcome_rows(Outcome(Job(asset), None, result=result), spec.config_hash()))
    if len(shard) == {shard}:
        store.write_samples([s for rows in shard for s in rows[0]]); store.write_assets([rows[2] for rows in shard]); shard = []
store.write_samples([s for rows in shard for s in rows[0]]); store.write_assets([rows[2] for rows in shard])
loop_s = time.perf_counter() - t
bytes_per_asset = len(pickle.dumps(worker.process(assets[0])))

# The flow: rendering replaced by the stand-in, everything else as a build runs it.
build._worker_factory = lambda *args: partial(SleepingWorker, spec, sleep_s)
first, record = [], build._record
def timed(summary, outcome, samples):
    if samples and not first:
        first.append(time.perf_counter())
    record(summary, outcome, samples)
build._record = timed
t = time.perf_counter()
state = build.build_kinematicparts20k(source={{"kind": "local", "folder": str(work / "assets")}}, render=spec.model_dump(),
                                      lance_uri=str(work / "flow.lance"), cache_dir=str(work / "flow-cache"),
                                      pool_size=1, shard_size={shard}, return_state=True)
flow_s = time.perf_counter() - t
report = state.result()
flow_store = DatasetStore(str(work / "flow.lance"))
print(json.dumps({{
    "assets": len(assets), "samples": report.render.samples_written, "loop_s": loop_s, "flow_s": flow_s,
    "loop_first_sample_s": first_loop, "flow_first_sample_s": first[0] - t if first else None,
    "driver_bytes_per_asset": bytes_per_asset, "shards": report.render.shards,
    "versions_before_compaction": {{k: v for k, v in report.versions.items()}},
    "tables_after": {{t: [len(flow_store.checkout(table=t).get_fragments()), len(flow_store.checkout(table=t).versions())] for t in TABLES}},
    "prefect_db_mb": os.path.getsize(Path(os.environ["PREFECT_HOME"]) / "prefect.db") / 2**20,
}}))
"""


def dry_run_build(n_assets: int, grid: dict, sleep_s: float, shard: int, root: Path) -> dict:
    """The build flow over ``n_assets`` tiny local files with the stand-in worker, against a plain loop."""
    work = root / f"build-{n_assets}"
    (work / "assets").mkdir(parents=True)
    for i in range(n_assets):
        (work / "assets" / f"a{i:06d}.glb").write_bytes(b"glTF" + i.to_bytes(8, "little"))
    code = CHILD_BUILD.format(repo=str(REPO), bench=str(REPO / "benchmarks"), spec=grid, sleep=sleep_s, work=str(work), shard=shard)
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise SystemExit(f"dry-run build failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(child: str, annotations: Path, work: Path) -> dict:
    code = child.format(repo=str(REPO), store=str(work / "kp20k.lance"), annotations=str(annotations), commit=BASELINE_COMMIT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="200000,1000000", help="comma-separated annotation table sizes")
    parser.add_argument("--baseline-rows", type=int, default=100_000, help="size at which the old code is measured (0: skip)")
    parser.add_argument("--work", help="folder for the tables (default: a temporary one, removed after)")
    parser.add_argument("--build", type=int, default=0, help="also a dry-run build over this many assets (0: skip)")
    parser.add_argument("--grid", default="4x4x64", help="dry-run build: views x frames x resolution of the stand-in's sample")
    parser.add_argument("--sleep", type=float, default=0.05, help="dry-run build: seconds the stand-in 'renders' an asset")
    parser.add_argument("--shard", type=int, default=8, help="dry-run build: assets committed together")
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",") if r]
    summary: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="kp20k-scale-", dir=args.work) as tmp:
        runs = [("new", n, CHILD_NEW) for n in sizes]
        if args.baseline_rows:
            runs += [("new", args.baseline_rows, CHILD_NEW)] * (args.baseline_rows not in sizes)
            runs += [("old", args.baseline_rows, CHILD_OLD)]
        tables: dict[int, Path] = {}
        for kind, n, child in runs:
            if n not in tables:
                tables[n] = Path(tmp) / f"annotations-{n}"
                t = time.perf_counter()
                write_tables(tables[n], n)
                size_mb = sum(p.stat().st_size for p in tables[n].rglob("*.parquet")) / 2**20
                print(f"{n:>10,} rows: tables written in {time.perf_counter() - t:.1f} s ({size_mb:.0f} MB of parquet)", flush=True)
            work = Path(tmp) / f"{kind}-{n}"
            work.mkdir()
            # each run in its own process: the refresh's peak memory is its own, not the first run's
            runs_here = ("first", "refresh") if kind == "new" else ("first",)
            result = {run: measure(child, tables[n], work) for run in runs_here}
            summary[f"{kind}-{n}"] = result
            for run, r in result.items():
                print(f"{kind:>3} {n:>10,} rows, {run:<7}: {r['seconds']:7.1f} s, peak RSS {r['peak_rss_mb']:6.0f} MB; "
                      f"{r['scanned']:,} rig-format rows, {r['accepted']:,} candidates, {r['rejected']:,} rejected, "
                      f"{r['written']:,} rejection rows written ({r['rejections_versions']} table versions)", flush=True)
        if args.build:
            views, frames, resolution = (int(x) for x in args.grid.split("x"))
            grid = {"n_views": views, "n_frames": frames, "resolution": resolution}
            b = summary["build"] = dry_run_build(args.build, grid, args.sleep, args.shard, Path(tmp))
            print(f"dry-run build, {b['assets']} assets, stand-in {args.sleep} s/asset, grid {args.grid}, 1 worker: "
                  f"flow {b['flow_s']:.1f} s vs plain loop {b['loop_s']:.1f} s ({b['assets'] / b['flow_s']:.1f} vs "
                  f"{b['assets'] / b['loop_s']:.1f} assets/s, overhead {b['flow_s'] / b['loop_s'] - 1:+.0%}); first sample at "
                  f"{b['flow_first_sample_s']:.1f} s (loop {b['loop_first_sample_s']:.2f} s); driver receives "
                  f"{b['driver_bytes_per_asset'] / 1024:.0f} KB per asset; {b['shards']} shards; versions "
                  f"{b['versions_before_compaction']}, (fragments, versions) after upkeep {b['tables_after']}; "
                  f"Prefect database {b['prefect_db_mb']:.1f} MB", flush=True)
    if args.baseline_rows:
        new, old = summary[f"new-{args.baseline_rows}"]["first"], summary[f"old-{args.baseline_rows}"]["first"]
        print(f"at {args.baseline_rows:,} rows, new vs old: {old['seconds'] / new['seconds']:.1f}x faster, "
              f"peak RSS {new['peak_rss_mb']:.0f} vs {old['peak_rss_mb']:.0f} MB")
    if len(sizes) > 1:
        small, large = summary[f"new-{min(sizes)}"]["first"], summary[f"new-{max(sizes)}"]["first"]
        print(f"{min(sizes):,} -> {max(sizes):,} rows: time x{large['seconds'] / small['seconds']:.1f}, "
              f"peak RSS x{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
