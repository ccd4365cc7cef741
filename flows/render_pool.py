"""A pool of long-lived Ray actors, each supervising one warm worker (one Blender), fed one asset at a time.

The pool owns the failure modes of a Blender process so that each costs one asset, never the run:

- each actor runs its Blender in a child process (:mod:`flows.blender_process`), so a crash is
  explained (exit signal or code, the kernel's OOM killer or not, peak memory, the end of its Blender
  log) and the actor starts a fresh Blender for the next asset;
- a hang: the actor kills a Blender that misses the asset's deadline (a ``timeout`` outcome); if the
  actor itself stops answering, the pool kills it after a grace period and starts another;
- an actor that dies (Ray's memory monitor, a lost node): a ``crashed`` outcome with Ray's cause;
- slow leaks: an actor's Blender is replaced after ``recycle_after`` assets, by a spare the actor
  starts while the old one works (:class:`flows.blender_process.SupervisedWorker`), so recycling
  costs no wait for a Blender to start and the actor itself lives on;
- a dead driver: each actor watches the process that started the pool and exits within a couple of
  seconds of its death, whatever process group it is in (its Blender dies with it).

Work goes to the data: given a ``fetcher``, each actor downloads its assets itself and hands each
back to the fetcher once decided, which evicts its copy past the cache's cap. Each actor holds two
jobs: the one its Blender renders and the next, already sent, whose download starts at once (a
``prefetch`` call in a concurrency group of its own) and which the actor starts the moment the
first is done, without waiting for the driver. Jobs are pulled from the caller's iterable as actors
take them, so at most two per actor are in flight, plus ``size`` waiting, whatever the build's size.

Outcomes stream back as they finish (``ray.wait``), in completion order, so the driver can commit
them in shards while the rest render. Each actor's failure touches only its own asset: the others'
work in flight is untouched.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator, Literal

import ray
from ray.exceptions import RayError

from flows.blender_process import SupervisedWorker, WorkerDeath
from flows.liveness import ProcessIdentity
from schemas.assets import AssetRef, RejectReason
from schemas.errors import ReasonError

FETCH_THREADS = 2  # the asset being fetched for the current job and the one prefetched for the next
JOBS_PER_ACTOR = 2  # the one rendering and the next, sent ahead: the actor never waits for the driver

# Consecutive actors that die before becoming ready: past this the cluster cannot host a worker at
# all (bpy missing, out of memory), and going on would only spin.
MAX_START_FAILURES = 3
# The actor enforces each asset's deadline itself; the pool steps in only when the actor stops answering.
ACTOR_GRACE_S = 60.0
CLOSE_GRACE_S = 10.0  # for idle actors to end their Blender at close
WATCHDOG_PERIOD_S = 0.5


class PoolError(ReasonError, RuntimeError):
    """The pool cannot go on (no worker can start); ``reason`` is a stable code."""


@dataclass(frozen=True)
class WorkerInfo:
    """Where an asset was rendered: the Blender process (``pid``), the actor supervising it, the node."""

    pid: int
    node_id: str
    node_ip: str
    actor_id: str
    actor_pid: int


@dataclass(frozen=True)
class Job:
    asset: AssetRef
    clips: list[str] | None = None


@dataclass(frozen=True)
class Outcome:
    """One asset, done. ``result`` is the worker's return value; on a timeout, a crash or a failed
    fetch it is None and ``failure`` says which, with ``detail``, decided at ``stage`` (``"pool"`` for
    timeouts and crashes, ``"fetch"``)."""

    job: Job
    worker: WorkerInfo | None
    result: Any = None
    failure: RejectReason | None = None
    detail: str = ""
    seconds: float = 0.0
    stage: str = "pool"


@dataclass(frozen=True)
class Unfetched:
    """What an actor returns for an asset its fetcher could not bring in."""

    reason: RejectReason
    detail: str


EventKind = Literal["worker_started", "dispatched", "finished", "timeout", "crashed", "recycled"]


@dataclass(frozen=True)
class PoolEvent:
    kind: EventKind
    worker: WorkerInfo | None
    asset: AssetRef | None = None


@dataclass
class PoolStats:
    workers_started: int = 0
    recycled: int = 0
    timeouts: int = 0
    crashes: int = 0
    start_failures: int = 0


class _RenderActor:
    """Runs inside a Ray worker process: supervises one Blender child, processes assets one by one."""

    def __init__(self, make_worker: Callable[[], Any], driver: ProcessIdentity | None = None, fetcher: Any = None,
                 recycle_after: int | None = None):
        self._worker = SupervisedWorker(make_worker, recycle_after=recycle_after)
        self._fetcher = fetcher
        self._downloads = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="fetch")
        self._ahead: dict[str, Future] = {}
        if driver is not None and driver.on_this_host():
            threading.Thread(target=self._watch, args=(driver,), name="driver-watchdog", daemon=True).start()

    def identity(self) -> WorkerInfo:
        context = ray.get_runtime_context()
        return WorkerInfo(
            self._worker.pid or 0, context.get_node_id(), ray.util.get_node_ip_address(), context.get_actor_id(), os.getpid()
        )

    @ray.method(concurrency_group="fetch")  # runs at once, beside a process call in progress
    def prefetch(self, asset: AssetRef) -> None:
        """Start fetching the asset this actor will process next (returns at once)."""
        if self._fetcher is not None and asset.sha256 not in self._ahead:
            self._ahead[asset.sha256] = self._downloads.submit(self._fetcher.fetch, asset)

    def process(self, asset: AssetRef, clips: list[str] | None, timeout_s: float) -> tuple[Any, int, int]:
        """(the worker's result, a :class:`WorkerDeath` or an :class:`Unfetched`; the pid of the
        Blender that takes the next asset, 0 if none could start; how many Blenders were recycled
        so far)."""
        if self._worker.pid is None:
            self._worker.start()  # the last restart failed: try once more, or raise and be retired
        if self._fetcher is not None:
            download = self._ahead.pop(asset.sha256, None) or self._downloads.submit(self._fetcher.fetch, asset)
            try:
                asset = download.result()
            except ReasonError as exc:
                return Unfetched(RejectReason(exc.reason), exc.detail), self._worker.pid or 0, self._worker.recycled
            except Exception as exc:  # noqa: BLE001 - a fetcher's bug costs this asset, retried by a refresh
                return Unfetched(RejectReason.download_failed, _one_line(exc)), self._worker.pid or 0, self._worker.recycled
        try:
            result = self._worker.process(asset, clips, timeout_s)
            return result, self._worker.pid or 0, self._worker.recycled
        finally:
            if self._fetcher is not None:
                try:
                    self._fetcher.release(asset)  # decided, whatever the outcome: its copy may go
                except OSError as exc:  # a copy that cannot be removed costs disk, never the asset
                    print(f"kp20k render actor: download of {asset.sha256} not evicted: {exc}", flush=True)

    def close(self) -> None:
        """End the Blender and remove its scratch folder (Ray's kill would leave the folder behind)."""
        self._downloads.shutdown(wait=False, cancel_futures=True)
        self._worker.close()

    def _watch(self, driver: ProcessIdentity) -> None:
        while driver.is_alive():
            time.sleep(WATCHDOG_PERIOD_S)
        try:
            self._worker.close()
        finally:
            os._exit(1)  # the driver is gone: nobody will collect this actor's work


@dataclass
class _Sent:
    job: Job
    ref: Any


@dataclass
class _Slot:
    handle: Any
    ready_ref: Any
    started_at: float
    info: WorkerInfo | None = None
    sent: deque[_Sent] = field(default_factory=deque)  # in the actor's order; the first is rendering
    head_since: float = 0.0  # when the first of ``sent`` started
    deadline: float = 0.0  # for the first of ``sent``
    recycled: int = 0  # Blenders this actor replaced so far

    @property
    def busy(self) -> bool:
        return bool(self.sent)


@dataclass
class RenderPool:
    """``size`` actors built by ``make_worker`` (a picklable zero-argument callable), started lazily.

    Use as a context manager (or call :meth:`close`): every actor is killed on exit.
    """

    make_worker: Callable[[], Any]
    size: int
    recycle_after: int = 100
    asset_timeout_s: float = 600.0
    cpus_per_worker: float = 1.0
    startup_timeout_s: float = 300.0
    fetcher: Any = None  # picklable; ``fetch(asset) -> asset`` (raises a ReasonError) and ``release(asset)``
    fetch_timeout_s: float = 0.0  # what a fetch may take, added to an unanswering actor's deadline
    on_event: Callable[[PoolEvent], None] | None = None
    stats: PoolStats = field(default_factory=PoolStats)

    def __post_init__(self) -> None:
        if self.size < 1 or self.recycle_after < 1 or self.asset_timeout_s <= 0:
            raise ValueError("size and recycle_after must be >= 1 and asset_timeout_s > 0")
        self._actor_class = ray.remote(concurrency_groups={"fetch": 1})(_RenderActor).options(
            num_cpus=self.cpus_per_worker, max_restarts=0, max_task_retries=0
        )
        self._driver = ProcessIdentity.of_this_process()
        self._slots: list[_Slot] = []
        self._waiting: deque[Job] = deque()
        self._consecutive_start_failures = 0

    def __enter__(self) -> "RenderPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Idle actors close their Blender themselves (a busy one may be hung: it is only killed).
        closing = [slot.handle.close.remote() for slot in self._slots if not slot.busy]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=CLOSE_GRACE_S)
        for slot in self._slots:
            ray.kill(slot.handle, no_restart=True)
        self._slots.clear()

    # -- the loop ------------------------------------------------------------------------------

    def imap(self, jobs: Iterable[Job]) -> Iterator[Outcome]:
        """Process every job; yield one :class:`Outcome` per job as soon as it is known. ``jobs`` is
        read lazily: no more than ``size`` jobs wait in the pool beyond two per actor."""
        source, self._waiting, exhausted = iter(jobs), deque(), False
        while True:
            # ``size`` waiting beyond what the ready actors can take now (two each)
            room = sum(JOBS_PER_ACTOR - len(s.sent) for s in self._slots if s.info is not None)
            while not exhausted and len(self._waiting) < self.size + room:
                job = next(source, None)
                exhausted = job is None
                self._waiting.extend([job] if job is not None else [])
            if not self._waiting and not any(s.busy for s in self._slots):
                return
            self._fill(len(self._waiting))
            # Idle actors first; jobs are sent ahead only while the source has more: at the tail, a job
            # waits for the first actor free rather than queueing behind another's.
            for depth in range(1, JOBS_PER_ACTOR + 1 if not exhausted else 2):
                for slot in self._slots:
                    if slot.info is not None:
                        self._top_up(slot, depth)
            refs = [s.sent[0].ref if s.busy else s.ready_ref for s in self._slots if s.busy or s.info is None]
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._wait_budget()) if refs else ([], [])
            for ref in ready:
                outcome = self._settle(ref)
                if outcome is not None:
                    yield outcome
            yield from self._expire()

    def _fill(self, queued: int) -> None:
        """Start actors until the busy plus the queued work has one each, up to ``size``."""
        busy = sum(1 for s in self._slots if s.busy)
        while len(self._slots) < min(self.size, busy + queued):
            handle = self._actor_class.remote(self.make_worker, self._driver, self.fetcher, self.recycle_after)
            self._slots.append(_Slot(handle, handle.identity.remote(), time.monotonic()))

    def _top_up(self, slot: _Slot, depth: int) -> None:
        """Send a ready actor waiting jobs until it holds ``depth``: each one's download starts at once,
        its processing when the one before ends."""
        while len(slot.sent) < depth and self._waiting:
            job = self._waiting.popleft()
            if self.fetcher is not None:
                slot.handle.prefetch.remote(job.asset)
            slot.sent.append(_Sent(job, slot.handle.process.remote(job.asset, job.clips, self.asset_timeout_s)))
            if len(slot.sent) == 1:
                self._start_head(slot)

    def _start_head(self, slot: _Slot) -> None:
        """The first job of ``slot`` is (about to be) processing: its deadline starts now."""
        slot.head_since = time.monotonic()
        slot.deadline = slot.head_since + self.fetch_timeout_s + self.asset_timeout_s + ACTOR_GRACE_S
        self._emit("dispatched", slot.info, slot.sent[0].job.asset)

    def _wait_budget(self) -> float:
        now = time.monotonic()
        deadlines = [s.deadline for s in self._slots if s.busy]
        deadlines += [s.started_at + self.startup_timeout_s for s in self._slots if s.info is None]
        return max(0.0, min(deadlines, default=now + 1.0) - now)

    def _settle(self, ref: Any) -> Outcome | None:
        slot = next(s for s in self._slots if ref == s.ready_ref or (s.busy and ref == s.sent[0].ref))
        if slot.info is None:
            self._settle_start(slot)
            return None
        outcome = self._outcome(slot, ref)
        if slot in self._slots and slot.busy:
            self._start_head(slot)  # the actor went straight on to the job sent ahead
        return outcome

    def _outcome(self, slot: _Slot, ref: Any) -> Outcome:
        """The first job of ``slot`` is done: its outcome; the slot is retired when its actor is gone
        or has no Blender left."""
        job, worker, seconds = slot.sent.popleft().job, slot.info, time.monotonic() - slot.head_since
        try:
            result, next_pid, recycled = ray.get(ref)
        except RayError as exc:
            self.stats.crashes += 1
            self._emit("crashed", worker, job.asset)
            self._retire(slot)
            return Outcome(job, worker, failure=RejectReason.crashed, detail=_actor_death(exc, worker), seconds=seconds)
        outcome = self._judge(job, worker, result, seconds)
        slot.info = replace(worker, pid=next_pid)
        for _ in range(recycled - slot.recycled):
            self.stats.recycled += 1
            self._emit("recycled", worker)
        slot.recycled = recycled
        if not next_pid:  # no fresh Blender could start in this actor
            self._retire(slot)
        return outcome

    def _judge(self, job: Job, worker: WorkerInfo, result: Any, seconds: float) -> Outcome:
        if isinstance(result, Unfetched):
            return Outcome(job, worker, failure=result.reason, detail=result.detail, seconds=seconds, stage="fetch")
        if isinstance(result, WorkerDeath):
            if result.reason is RejectReason.timeout:
                self.stats.timeouts += 1
            else:
                self.stats.crashes += 1
            self._emit("timeout" if result.reason is RejectReason.timeout else "crashed", worker, job.asset)
            return Outcome(job, worker, failure=result.reason, detail=result.detail, seconds=seconds)
        self._emit("finished", worker, job.asset)
        return Outcome(job, worker, result=result, seconds=seconds)

    def _settle_start(self, slot: _Slot) -> None:
        try:
            slot.info = ray.get(slot.ready_ref)
        except RayError as exc:
            self._start_failed(slot, _one_line(exc))
            return
        self._consecutive_start_failures = 0
        self.stats.workers_started += 1
        self._emit("worker_started", slot.info)

    def _start_failed(self, slot: _Slot, detail: str) -> None:
        self.stats.start_failures += 1
        self._consecutive_start_failures += 1
        self._retire(slot)
        if self._consecutive_start_failures >= MAX_START_FAILURES:
            self.close()
            raise PoolError("worker_start_failed", f"{MAX_START_FAILURES} render workers in a row failed to start: {detail}")

    def _expire(self) -> Iterator[Outcome]:
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.info is None and now > slot.started_at + self.startup_timeout_s:
                self._start_failed(slot, f"not ready after {self.startup_timeout_s:.0f} s")
            elif slot.busy and now > slot.deadline:
                if ray.wait([slot.sent[0].ref], timeout=0)[0]:  # it finished while the caller held an outcome
                    yield self._settle(slot.sent[0].ref)
                    continue
                job, worker = slot.sent.popleft().job, slot.info
                self.stats.timeouts += 1
                self._emit("timeout", worker, job.asset)
                self._retire(slot)
                yield Outcome(
                    job, worker, failure=RejectReason.timeout,
                    detail=f"no result after {self.asset_timeout_s + ACTOR_GRACE_S:g} s (the asset's deadline plus "
                    f"{ACTOR_GRACE_S:g} s of grace): render actor pid {worker.actor_pid} stopped answering and was killed",
                    seconds=now - slot.head_since,
                )

    def _retire(self, slot: _Slot) -> None:
        """Kill the actor and drop its slot (the jobs sent ahead to it go back to the front of the
        line, in order); :meth:`_fill` starts a replacement if work remains."""
        ray.kill(slot.handle, no_restart=True)
        self._slots.remove(slot)
        self._waiting.extendleft(reversed([sent.job for sent in slot.sent]))
        slot.sent.clear()

    def _emit(self, kind: EventKind, worker: WorkerInfo | None, asset: AssetRef | None = None) -> None:
        if self.on_event is not None:
            self.on_event(PoolEvent(kind, worker, asset))


def _actor_death(exc: RayError, worker: WorkerInfo) -> str:
    """Why an actor (not its Blender) died, as far as Ray knows: its memory monitor says so by type."""
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        cause = f"Ray's memory monitor killed render actor pid {worker.actor_pid}"
    else:
        cause = f"render actor pid {worker.actor_pid} died (its Blender pid {worker.pid} died with it)"
    return f"{cause}: {_one_line(exc)}"


def _one_line(exc: BaseException, limit: int = 600) -> str:
    """The error on one line; a long one keeps its head and its tail (a traceback's last line is the cause)."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= limit else f"{text[: limit // 3]} ... {text[-(2 * limit // 3):]}"
