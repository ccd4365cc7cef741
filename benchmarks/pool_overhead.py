"""The render pool's own cost per asset: the pool (a Ray actor, its worker process, two jobs in
flight) against the same stand-in worker called in a plain loop in this process, in one run.

    PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/pool_overhead.py [--assets 200] [--sleep 0.0]

Both use ``benchmarks/standin_worker.py``: the fetcher writes a 64 KB placeholder into a cache and
evicts it, the worker sleeps ``--sleep`` s and stages one 4 x 4 x 64 px sample in a Lance table.
No Prefect. Prints ms per asset for the loop and the pool, and their ratio. ``--recycle-after``
shows what recycling costs: each recycle replaces the actor's worker process by a spare started
ahead (so no wait), whose start still takes CPU beside the work.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from flows.ray_cluster import connect  # noqa: E402
from flows.render_pool import Job, RenderPool  # noqa: E402
from pipelines.build.store import DatasetStore  # noqa: E402
from schemas.assets import AssetRef  # noqa: E402
from schemas.fetch import FetchSettings  # noqa: E402
from schemas.render import RenderSpec  # noqa: E402
from standin_worker import PlaceholderFetcher, SleepingWorker  # noqa: E402

SPEC = RenderSpec(n_views=4, n_frames=4, resolution=64)


def assets(n: int, offset: int) -> list[AssetRef]:
    return [AssetRef(file_identifier=f"x{i}", source="local", file_type="glb", sha256=f"{i:064x}") for i in range(offset, offset + n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds the stand-in 'renders' an asset")
    parser.add_argument("--recycle-after", type=int, default=100, help="the pool's recycling (100: the build's default)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kp20k-pool-overhead-"))
    uri = str(work / "t.lance")
    DatasetStore(uri)

    fetcher, worker = PlaceholderFetcher(str(work / "loop-cache"), FetchSettings()), SleepingWorker(SPEC, args.sleep, uri)
    started = time.perf_counter()
    for asset in assets(args.assets, 0):
        fetched = fetcher.fetch(asset)
        worker.process(fetched)
        fetcher.release(fetched)
    loop_ms = (time.perf_counter() - started) / args.assets * 1000

    connection = connect(None)
    try:
        pool = RenderPool(partial(SleepingWorker, SPEC, args.sleep, uri), size=1, recycle_after=args.recycle_after,
                          fetcher=PlaceholderFetcher(str(work / "pool-cache"), FetchSettings()))
        with pool:
            first = last = None
            for _ in pool.imap(Job(a) for a in assets(args.assets + 1, args.assets)):
                # from the first outcome to the last: neither the actor's start nor the pool's close is per asset
                first, last = first or time.perf_counter(), time.perf_counter()
        pool_ms = (last - first) / args.assets * 1000
    finally:
        connection.close()
    print(f"{args.assets} assets, stand-in {args.sleep} s, recycled after {args.recycle_after}: plain loop {loop_ms:.1f} ms/asset, pool (1 actor) "
          f"{pool_ms:.1f} ms/asset: {pool_ms / loop_ms:.2f}x, +{pool_ms - loop_ms:.1f} ms/asset")
    print(json.dumps({"assets": args.assets, "sleep_s": args.sleep, "recycle_after": args.recycle_after, "loop_ms": round(loop_ms, 2), "pool_ms": round(pool_ms, 2)}))


if __name__ == "__main__":
    main()
