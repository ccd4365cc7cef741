"""The render pool with real workers (one warm Blender each) on a real local Ray.

A hang is a Blender process stopped with SIGSTOP mid-asset (it makes no progress, like a deadlocked
Blender); a crash is the Blender process killed with SIGKILL mid-asset. Both are done to the Blender
the pool reports for that asset, so each test knows which asset must fail.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest

from flows.render_pool import Job, PoolError, PoolEvent, RenderPool
from pipelines.build.sources.procedural import generate_assets
from pipelines.build.worker import AssetWorker
from schemas.assets import AssetRef, RejectReason
from schemas.filters import FilterRules
from schemas.render import RenderSpec
from tests.factories import hanging_asset
from tests.flows.conftest import TINY_RENDER, process_alive, wait_gone

pytestmark = pytest.mark.usefixtures("ray_session")


def make_worker():
    return partial(AssetWorker, RenderSpec(**TINY_RENDER), FilterRules(), 1)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> list[AssetRef]:
    return generate_assets(4, tmp_path_factory.mktemp("pool-assets"), seed=10)


def test_outcomes_stream_back_and_workers_are_recycled(assets):
    events: list[PoolEvent] = []
    with RenderPool(make_worker(), size=1, recycle_after=2, asset_timeout_s=120, on_event=events.append) as pool:
        outcomes = list(pool.imap(Job(a) for a in assets))
    assert [o.job.asset.sha256 for o in outcomes] == [a.sha256 for a in assets]  # one worker: in order
    assert all(o.failure is None and o.result.samples for o in outcomes)
    assert all(o.result.n_renders >= len(o.result.samples) for o in outcomes)
    # 4 assets, recycled after 2: two Blenders, each a different process, each ended after its second
    # asset, in the one actor, which lives on.
    pids = [o.worker.pid for o in outcomes]
    assert pids[0] == pids[1] != pids[2] == pids[3]
    assert len({o.worker.actor_pid for o in outcomes}) == 1
    assert pool.stats.workers_started == 1 and pool.stats.recycled == 2
    assert [e.kind for e in events].count("recycled") == 2
    assert all(wait_gone(pid) for pid in set(pids))


def test_a_hung_worker_times_out_and_a_killed_worker_crashes_and_the_rest_finish(assets, tmp_path):
    fifo = hanging_asset(tmp_path)
    fifo_asset = AssetRef(
        file_identifier=fifo.as_uri(), source="local", file_type="glb", sha256="f" * 64, local_path=str(fifo)
    )
    to_hang, to_crash = assets[1].sha256, assets[2].sha256
    jobs = [Job(a) for a in (assets[0], assets[1], fifo_asset, assets[2], assets[3])]
    faults: dict[str, int] = {}

    def fault(event: PoolEvent) -> None:
        if event.kind == "dispatched" and event.asset.sha256 in (to_hang, to_crash):
            faults[event.asset.sha256] = event.worker.pid
            os.kill(event.worker.pid, signal.SIGSTOP if event.asset.sha256 == to_hang else signal.SIGKILL)

    with RenderPool(make_worker(), size=2, asset_timeout_s=10, on_event=fault) as pool:
        outcomes = {o.job.asset.sha256: o for o in pool.imap(jobs)}

    assert len(outcomes) == len(jobs)
    assert outcomes[to_hang].failure is RejectReason.timeout
    assert f"Blender worker pid {faults[to_hang]} killed" in outcomes[to_hang].detail
    assert outcomes[to_crash].failure is RejectReason.crashed
    assert f"Blender worker pid {faults[to_crash]} killed by SIGKILL" in outcomes[to_crash].detail
    # The worker refuses the FIFO before opening it: a rejection from the worker, not a hang.
    (fifo_rejection,) = outcomes["f" * 64].result.rejections
    assert fifo_rejection.reason is RejectReason.file_missing
    for asset in (assets[0], assets[3]):
        assert outcomes[asset.sha256].failure is None and outcomes[asset.sha256].result.samples
    assert pool.stats.timeouts == 1 and pool.stats.crashes == 1
    # Each failure cost its Blender, not its actor: the actors started a fresh Blender and went on, and
    # the stopped process is gone (reaped by its actor before the outcome came back), not left frozen.
    assert pool.stats.workers_started == 2
    assert len({o.worker.actor_pid for o in outcomes.values()}) == 2
    assert outcomes[assets[3].sha256].worker.pid not in faults.values()
    assert not process_alive(faults[to_hang]) and not process_alive(faults[to_crash])


def test_an_actor_killed_outright_costs_its_asset_and_says_so(assets):
    killed: dict[str, int] = {}

    def kill_actor(event: PoolEvent) -> None:
        if event.kind == "dispatched" and not killed:
            killed[event.asset.sha256] = event.worker.actor_pid
            os.kill(event.worker.actor_pid, signal.SIGKILL)

    with RenderPool(make_worker(), size=2, asset_timeout_s=60, on_event=kill_actor) as pool:
        outcomes = {o.job.asset.sha256: o for o in pool.imap(Job(a) for a in assets)}
    ((sha, actor_pid),) = killed.items()
    assert outcomes[sha].failure is RejectReason.crashed
    assert f"render actor pid {actor_pid} died" in outcomes[sha].detail
    assert all(o.failure is None and o.result.samples for s, o in outcomes.items() if s != sha)
    # Its Blender died with it (PR_SET_PDEATHSIG): nothing of the killed actor is left running.
    assert wait_gone(outcomes[sha].worker.pid)


def test_a_result_that_arrives_while_the_caller_is_busy_is_not_a_timeout(assets):
    outcomes = []
    with RenderPool(make_worker(), size=2, asset_timeout_s=4) as pool:
        for outcome in pool.imap(Job(a) for a in assets[:2]):
            outcomes.append(outcome)
            time.sleep(5)  # a slow shard commit: the other asset finishes meanwhile, and its deadline passes
    assert [o.failure for o in outcomes] == [None, None]
    assert pool.stats.timeouts == 0


def failing_worker():
    raise RuntimeError("no Blender on this node")


def test_workers_that_cannot_start_stop_the_pool_with_a_reason(assets):
    with pytest.raises(PoolError) as caught:
        with RenderPool(failing_worker, size=1, asset_timeout_s=30) as pool:
            list(pool.imap([Job(assets[0])]))
    assert caught.value.reason == "worker_start_failed"
    assert "no Blender on this node" in str(caught.value)
    assert pool.stats.start_failures == 3


def test_workers_fetch_their_own_assets_one_ahead_and_evict_them_once_decided(tmp_path):
    """Work goes to the data: each actor fetches (and prefetches its next job), a failed fetch costs
    its asset only, decided downloads leave the cache (cap 0), and the jobs are read lazily. The first
    actor is killed on its first asset: the job reserved for it next is not lost."""
    from pipelines.build.fetch import NodeFetcher
    from schemas.fetch import FetchSettings

    assets = generate_assets(4, tmp_path / "assets", seed=30)
    Path(assets[3].local_path).unlink()  # gone before its worker fetches it
    taken: list[int] = []

    def jobs():
        for n, a in enumerate(assets):
            taken.append(n)
            yield Job(a)

    killed: list[str] = []

    def kill_first_actor(event: PoolEvent) -> None:
        if event.kind == "dispatched" and not killed:
            killed.append(event.asset.sha256)
            os.kill(event.worker.actor_pid, signal.SIGKILL)

    cache = tmp_path / "cache"
    fetcher = NodeFetcher(str(cache), FetchSettings(cache_max_gb=0))
    outcomes, taken_at_first = {}, None
    with RenderPool(make_worker(), size=1, asset_timeout_s=120, fetcher=fetcher, on_event=kill_first_actor) as pool:
        for outcome in pool.imap(jobs()):
            taken_at_first = len(taken) if taken_at_first is None else taken_at_first
            assert outcome.job.asset.sha256 not in outcomes  # each job exactly once
            outcomes[outcome.job.asset.sha256] = outcome
    assert taken_at_first <= 3  # one rendering, one reserved next, one waiting: never the whole list
    assert set(outcomes) == {a.sha256 for a in assets}
    assert outcomes[killed[0]].failure is RejectReason.crashed
    missing = outcomes[assets[3].sha256]
    assert (missing.failure, missing.stage) == (RejectReason.file_missing, "fetch") and missing.result is None
    rendered = [o for s, o in outcomes.items() if s not in (killed[0], assets[3].sha256)]
    assert len(rendered) == 2 and all(o.failure is None and o.result.samples for o in rendered)
    assert all(Path(o.result.asset.local_path).is_relative_to(cache) for o in rendered)  # the worker's own copy
    # every download a live worker decided is evicted (the killed actor's own copy, if it got that far,
    # waits for the refresh that retries its asset)
    assert not [p for o in rendered for p in cache.rglob(f"{o.job.asset.sha256}*")]
