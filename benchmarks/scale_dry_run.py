"""Objaverse-XL at real scale, dry run: discovery + prefilter over annotation tables of 1M / 10M rows,
and a build whose rendering is a stand-in.

    .venv/bin/python benchmarks/scale_dry_run.py [--rows 200000,1000000] [--baseline-rows 100000]
    .venv/bin/python benchmarks/scale_dry_run.py --rows 1000000,10000000 --baseline-rows 1000000   # ~5 min here
    .venv/bin/python benchmarks/scale_dry_run.py --rows 1000000,10000000 --baseline-rows 0 --build 20000 [--grid 4x4x64 --sleep 0.02]

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

4. ``--build N``: at each table size, the build flow (``--source objaverse-xl --offline --limit N``)
   with one render worker whose fetching and rendering are stand-ins (``benchmarks/standin_worker.py``:
   a 64 KB placeholder written to the cache instead of a download; a ``--sleep`` s sleep instead of
   Blender, then one sample of the ``--grid``'s real byte size, staged in the table as a worker
   does), against a plain loop of the same stages (discovery, prefilter, plan, fetch, work, stage,
   commit in shards) in one process, in a fresh process with its own Prefect home: wall times,
   discovery+prefilter, time to the first sample, peak RSS of the driver, the render actor and its
   worker process, driver bytes received per asset (a pickled worker result), shards, table versions
   and (fragments, versions) after the build's upkeep, the Prefect database's size. ``--recycle-after``
   sets how many assets a worker process serves before a fresh one replaces it (the build's default,
   100, is meant for Blenders that take minutes an asset: with a stand-in of no time a fresh worker
   process starts every second or so; measured at 1M rows, 411.0 s with it against 388.8 s without).

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
import json, os, pickle, resource, sys, threading, time
from functools import partial
from pathlib import Path
sys.path[:0] = [{repo!r}, {bench!r}]
from flows.prefect_settings import apply_prefect_settings
apply_prefect_settings()
import psutil
import flows.build as build
from flows.render_pool import Job, Outcome
from pipelines.build.candidates import iter_candidates, stage_candidates, stage_todo
from pipelines.build.sources.objaverse_xl import annotation_scan
from pipelines.build.store import DatasetStore, TABLES
from schemas.fetch import FetchSettings
from schemas.filters import FilterRules
from schemas.prefilter import PrefilterRules
from schemas.render import RenderSpec
from standin_worker import PlaceholderFetcher, SleepingWorker

spec, sleep_s, work, limit, shard_size = RenderSpec(**{spec!r}), {sleep!r}, Path({work!r}), {limit!r}, {shard!r}
annotations, config = Path({annotations!r}), spec.config_hash()
peaks = {{"actor": 0, "worker": 0}}

def sample_memory():  # the peak RSS of the render actors and of their worker processes, every 0.5 s
    me = psutil.Process()
    while True:
        for child in me.children(recursive=True):
            try:
                line, rss = " ".join(child.cmdline()), child.memory_info().rss
            except psutil.Error:
                continue
            kind = "worker" if "flows.blender_process" in line else "actor" if "RenderActor" in line else None
            if kind:
                peaks[kind] = max(peaks[kind], rss)
        time.sleep(0.5)
threading.Thread(target=sample_memory, daemon=True).start()

# The plain loop: the same stages in one process, one stand-in worker, commits in shards of the same size.
t = time.perf_counter()
store, rules = DatasetStore(str(work / "loop.lance")), PrefilterRules()
found = stage_candidates(annotation_scan(annotations, offline=True, file_types=rules.file_types), rules, store,
                         work / "loop-candidates.parquet", limit)
loop_discovery_s = time.perf_counter() - t
stage_todo(found.path, build.finished_assets(store, config, FilterRules().rules_hash()), work / "loop-todo.parquet")
fetcher, worker = PlaceholderFetcher(str(work / "loop-cache"), FetchSettings()), SleepingWorker(spec, sleep_s, str(work / "loop.lance"))
shard, first_loop, bytes_per_asset = [], None, None
def commit(rows):
    build.commit_shard.fn(str(work / "loop.lance"), [r[0] for r in rows if r[0]], [x for r in rows for x in r[1]], [], [r[2] for r in rows if r[2]])
for asset in iter_candidates(work / "loop-todo.parquet"):
    fetched = fetcher.fetch(asset)
    result = worker.process(fetched)
    fetcher.release(fetched)
    first_loop = first_loop or time.perf_counter() - t
    bytes_per_asset = bytes_per_asset or len(pickle.dumps((result, 0)))  # what an actor sends the driver
    shard.append(build.outcome_rows(Outcome(Job(asset), None, result=result), config))
    if len(shard) == shard_size:
        commit(shard); shard = []
commit(shard)
loop_s = time.perf_counter() - t

# The flow: fetching and rendering replaced by the stand-ins, everything else as a build runs it.
build._worker_factory = lambda spec, filters, log_dir, lance_uri: partial(SleepingWorker, spec, sleep_s, lance_uri)
build.NodeFetcher = PlaceholderFetcher
first, record = [], build._record
def timed(summary, outcome, staged):
    if staged and not first:
        first.append(time.perf_counter())
    record(summary, outcome, staged)
build._record = timed
t = time.perf_counter()
state = build.build_kinematicparts20k(source={{"kind": "objaverse-xl", "objaverse_dir": str(annotations), "offline": True}},
                                      limit=limit, render=spec.model_dump(), lance_uri=str(work / "flow.lance"),
                                      cache_dir=str(work / "flow-cache"), pool_size=1, shard_size=shard_size,
                                      recycle_after={recycle_after!r}, return_state=True)
flow_s = time.perf_counter() - t
report = state.result()
flow_store = DatasetStore(str(work / "flow.lance"))
print(json.dumps({{
    "assets": found.accepted, "samples": report.render.samples_written, "loop_s": loop_s, "flow_s": flow_s,
    "loop_discovery_s": loop_discovery_s, "flow_discovery_s": report.seconds.get("discover+prefilter"),
    "loop_first_sample_s": first_loop, "flow_first_sample_s": first[0] - t if first else None,
    "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "actor_peak_rss_mb": peaks["actor"] / 2**20, "worker_peak_rss_mb": peaks["worker"] / 2**20,
    "driver_bytes_per_asset": bytes_per_asset, "shards": report.render.shards,
    "latest_versions": {{k: v for k, v in report.versions.items()}},
    "tables_after": {{t: [len(flow_store.checkout(table=t).get_fragments()), len(flow_store.checkout(table=t).versions())] for t in TABLES}},
    "prefect_db_mb": os.path.getsize(Path(os.environ["PREFECT_HOME"]) / "prefect.db") / 2**20,
    "flow_cache_files": sum(1 for _ in (work / "flow-cache").rglob("*.glb")),
}}))
"""


def dry_run_build(annotations: Path, n_assets: int, grid: dict, sleep_s: float, shard: int, recycle_after: int, work: Path) -> dict:
    """A build of ``n_assets`` candidates of the annotation tables at ``annotations`` with the
    stand-ins, against a plain loop of the same stages, in a fresh process with its own Prefect home."""
    work.mkdir(parents=True)
    code = CHILD_BUILD.format(repo=str(REPO), bench=str(REPO / "benchmarks"), spec=grid, sleep=sleep_s, work=str(work),
                              shard=shard, limit=n_assets, annotations=str(annotations), recycle_after=recycle_after)
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
    parser.add_argument("--build", type=int, default=0,
                        help="also, at each table size, a dry-run build of this many candidates (--limit) (0: skip)")
    parser.add_argument("--grid", default="4x4x64", help="dry-run build: views x frames x resolution of the stand-in's sample")
    parser.add_argument("--sleep", type=float, default=0.05, help="dry-run build: seconds the stand-in 'renders' an asset")
    parser.add_argument("--shard", type=int, default=64, help="dry-run build: assets committed together (the build's default)")
    parser.add_argument("--recycle-after", type=int, default=100,
                        help="dry-run build: assets a worker process serves before it is replaced (the build's default)")
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
            for n in sizes:
                b = summary[f"build-{n}"] = dry_run_build(tables[n], args.build, grid, args.sleep, args.shard, args.recycle_after,
                                                            Path(tmp) / f"build-{n}")
                print(f"dry-run build over {n:,} rows, {b['assets']} assets, stand-in {args.sleep} s/asset, grid {args.grid}, "
                      f"recycled after {args.recycle_after}, "
                      f"1 worker: flow {b['flow_s']:.1f} s vs plain loop {b['loop_s']:.1f} s ({b['assets'] / b['flow_s']:.1f} vs "
                      f"{b['assets'] / b['loop_s']:.1f} assets/s, overhead {b['flow_s'] / b['loop_s'] - 1:+.0%}); "
                      f"discovery+prefilter {b['flow_discovery_s']:.1f} s (loop {b['loop_discovery_s']:.1f} s); first sample at "
                      f"{b['flow_first_sample_s']:.1f} s (loop {b['loop_first_sample_s']:.1f} s); peak RSS driver "
                      f"{b['driver_peak_rss_mb']:.0f} MB, render actor {b['actor_peak_rss_mb']:.0f} MB, worker "
                      f"{b['worker_peak_rss_mb']:.0f} MB; driver receives {b['driver_bytes_per_asset'] / 1024:.1f} KB per asset; "
                      f"{b['shards']} shards; latest versions {b['latest_versions']}, (fragments, versions kept) after upkeep "
                      f"{b['tables_after']}; Prefect database {b['prefect_db_mb']:.1f} MB; {b['flow_cache_files']} downloads "
                      f"left in the cache", flush=True)
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
