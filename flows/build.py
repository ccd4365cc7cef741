"""The flow ``build-kinematicparts20k``: discover -> prefilter -> plan -> (fetch -> probe -> filter ->
parts -> render -> write, in Ray workers) -> commit shards -> report.

A refresh is the same flow run again: the plan skips every asset the store already decided for this
render configuration, so unchanged work opens no Blender, and a changed render spec renders new rows
beside the old ones.

Work goes to the data: each render worker fetches its assets into its node's cache (one ahead of
the one it renders), writes each asset's samples straight to the table's storage as an uncommitted
fragment, evicts the download, and hands back only the fragment's metadata and small rows (about a
kilobyte an asset). The driver never holds rendered bytes: it commits.

Resumability: the driver commits finished assets in shards (``shard_size`` assets, or what finished
within ``SHARD_MAX_S``), one at a time in a thread while the pool goes on, each shard in the order
samples -> rejections -> probes -> assets, and an asset a worker handled counts as finished only once
its ``assets`` row (written last) is in. A run killed at any point loses at most the shards handed
over and not yet committed (``PENDING_SHARDS``) and the one filling; the rerun redoes exactly those
assets, and the commits insert only keys not yet in the table, so nothing is duplicated.

Scale: discovery and the prefilter stream the annotations as Arrow batches into a candidates file
and the ``rejections`` table (``pipelines.build.candidates``); Prefect results carry counts, never a
row per annotation. No stage is cached by Prefect, on purpose: discovery must see new files, and the
store, not a Prefect cache that could outlive a deleted table, is what says which assets are done
(prefilter rejections already stored for the same rules are not written again).
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as prefect_flow_run

from flows.artifacts import (
    CONTACT_SHEET_SAMPLES,
    REJECTED_ASSET_ROWS,
    RenderProgress,
    SheetEntry,
    contact_sheet_path,
    contact_sheet_png,
    publish_contact_sheet,
    publish_rejected_assets,
    publish_report,
)
from flows.dead_runs import claim, crash_dead_runs
from flows.liveness import remove_dead_owners
from flows.ray_cluster import RayConnection, connect
from flows.reaper import start_reaper
from flows.render_pool import Job, Outcome, PoolEvent, RenderPool
from flows.report import BuildReport, RenderSummary, count_reasons
from pipelines.build.candidates import iter_candidates, stage_candidates, stage_todo
from pipelines.build.fetch import NodeFetcher, redact
from pipelines.build.prefilter import Scan, assets_batch
from pipelines.build.sources.local import discover_local
from pipelines.build.sources.objaverse_xl import (
    annotation_scan,
    sketchfab_object_index,
    sketchfab_object_paths_file,
)
from pipelines.build.sources.procedural import generate_assets
from pipelines.build.store import TABLES, DatasetStore, StagedSamples, absolute_uri, sql_literal
from pipelines.files import keep_newest
from pipelines.version import code_version, probe_version
from schemas.assets import AssetRef, ProbeReport, Rejection, RejectReason
from schemas.fetch import FetchSettings
from schemas.filters import FilterRules
from schemas.params import BuildParams, SourceParams
from schemas.prefilter import CandidateSummary, PrefilterRules
from schemas.render import RenderSpec
from schemas.tables import AssetRow, ProbeRow

FLOW_NAME = "build-kinematicparts20k"
DEFAULTS = BuildParams()
# Rejections that stand alone, with no ``assets`` row to mark them finished: the prefilter's, decided
# before any worker saw the asset, and a worker's failed fetch, which is the asset's only row.
PRE_WORKER_STAGES = ("prefilter", "fetch")
POOL_STAGE = "pool"  # timeouts and crashes, decided by the pool, not by the worker
WORKER_LOGS_KEPT = 64  # one log per Blender process under <cache_dir>/logs
SHARD_MAX_S = 60.0  # a shard is committed once this old, however few assets it holds
PENDING_SHARDS = 2  # shards handed to their commit task and not yet committed: one committing, one waiting


# ---------------------------------------------------------------------------------------- tasks


@task(name="discover-prefilter", cache_policy=NO_CACHE)
def discover_and_prefilter(params: BuildParams, staging: str) -> CandidateSummary:
    """Candidates from the source, streamed through the prefilter into the file ``staging``, prefilter
    rejections into the store; returns counts only. Never cached, so a refresh sees files added since."""
    store = DatasetStore(params.lance_uri)
    return stage_candidates(source_scan(params), params.prefilter, store, Path(staging), params.limit)


@task(name="plan", cache_policy=NO_CACHE)
def plan(candidates: CandidateSummary, lance_uri: str, config_hash: str, filter_rules_hash: str, todo: str) -> dict[str, int]:
    """Write to ``todo`` the candidates this render configuration and these filter rules have not
    finished yet (a no-op refresh writes none; changed filters bring back only the assets a filter
    had rejected); returns how many per source."""
    return stage_todo(candidates.path, finished_assets(DatasetStore(lance_uri), config_hash, filter_rules_hash), todo)


@task(name="commit-shard", cache_policy=NO_CACHE)
def commit_shard(
    lance_uri: str, staged: list[StagedSamples], rejections: list[Rejection], probes: list[ProbeRow], assets: list[AssetRow]
) -> tuple[int, int, int, list[str]]:
    """One shard, in completion order: the workers' staged samples (one version), the rejections, the
    probes (for every later render configuration), and last the ``assets`` rows, the marker of
    finished work, for the assets whose samples are all in. Returns (samples, rejections, assets
    added, the ids of the samples added)."""
    return DatasetStore(lance_uri).commit_shard(staged, rejections, probes, assets)


@task(name="render", cache_policy=NO_CACHE)
def render_assets(
    todo: str, total: int, params: BuildParams, fetch: FetchSettings
) -> tuple[RenderSummary, Counter[str], list[Rejection], list[str]]:
    """Fetch, probe, filter, split into parts and render the ``total`` assets listed in ``todo`` in
    the Ray pool, committing in shards. Returns the summary, this run's rejections by 'stage/reason',
    the first of them, and the ids of the first samples added (for the contact sheet)."""
    started = time.monotonic()
    connection = connect(params.ray_address)
    summary = RenderSummary(gcs_address=connection.gcs_address, ray_start_s=time.monotonic() - started)
    try:
        reasons, first, sheet_ids = _render_in_pool(connection, todo, total, params, fetch, summary)
    finally:
        stopping = time.monotonic()
        connection.close()
        summary.ray_stop_s = time.monotonic() - stopping
    summary.seconds = time.monotonic() - started
    return summary, reasons, first, sheet_ids


def _render_in_pool(
    connection: RayConnection, todo: str, total: int, params: BuildParams, fetch: FetchSettings, summary: RenderSummary
) -> tuple[Counter[str], list[Rejection], list[str]]:
    summary.pool_size, cpus_per_worker = pool_shape(params, connection)
    get_run_logger().info("rendering %d assets on %s with %d workers", total, connection.gcs_address, summary.pool_size)
    progress = RenderProgress(total=total)
    progress.start()
    shard = _Shard(params.lance_uri, summary, progress)
    pool_started = time.monotonic()

    def first_worker(event: PoolEvent) -> None:
        if event.kind == "worker_started" and not summary.first_worker_s:
            summary.first_worker_s = time.monotonic() - pool_started

    log_dir = Path(params.cache_dir).resolve() / "logs"
    keep_newest(log_dir, "blender-*.log", WORKER_LOGS_KEPT)  # a death's cause, log tail included, is in its rejection row
    pool = RenderPool(
        make_worker=_worker_factory(params.render, params.filters, str(log_dir), absolute_uri(params.lance_uri)),
        size=summary.pool_size,
        recycle_after=params.recycle_after,
        asset_timeout_s=params.asset_timeout_s,
        cpus_per_worker=cpus_per_worker,
        fetcher=NodeFetcher(str(Path(params.cache_dir).resolve()), fetch),
        fetch_timeout_s=fetch_budget_s(fetch),
        on_event=first_worker,
    )
    with pool:
        try:
            for outcome in pool.imap(Job(a) for a in iter_candidates(todo)):
                staged, found, row = outcome_rows(outcome, params.render.config_hash())
                _record(summary, outcome, staged)
                shard.add(outcome.job.asset.sha256, staged, found, row, outcome.result.probe if outcome.result is not None else None)
                progress.advance(bool(staged and staged.n_samples), [f"{r.stage}/{r.reason.value}" for r in found])
                if shard.size >= params.shard_size or shard.age_s >= SHARD_MAX_S:
                    shard.commit()
        finally:
            shard.commit(final=True)  # also when the pool gives up: finished assets are not redone
    stats = pool.stats
    summary.workers_started, summary.recycled = stats.workers_started, stats.recycled
    summary.timeouts, summary.crashes = stats.timeouts, stats.crashes
    return progress.failures, shard.first_rejections, shard.sheet_ids


@task(name="compact", cache_policy=NO_CACHE)
def compact_tables(lance_uri: str, since: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Fragments and versions kept bounded (``DatasetStore.compact``; ``since``: the versions this build
    started from, the ones it made after them go): table -> (fragments, versions).
    Upkeep never fails a build whose rows are committed: a failure is logged and tried by the next."""
    try:
        return DatasetStore(lance_uri).compact(since=since)
    except (OSError, ValueError) as exc:
        get_run_logger().warning("tables not compacted: %s", f"{type(exc).__name__}: {exc}"[:300])
        return {}


@task(name="report", cache_policy=NO_CACHE)
def publish(build: BuildReport, sheet_ids: list[str], cache_dir: str, rejections: list[Rejection]) -> BuildReport:
    """The contact sheet (this run's first samples, else the table's), the report and the rejections,
    as artifacts. The sheet's frames are read back from the table: they never went through the driver."""
    sheet = stored_sheet_entries(DatasetStore(build.lance_uri), build.config_hash, sheet_ids)
    if sheet:
        path = contact_sheet_path(build.lance_uri, cache_dir)
        publish_contact_sheet(contact_sheet_png(sheet), path)
        build = build.model_copy(update={"contact_sheet": str(path.resolve())})
    publish_report(build)
    publish_rejected_assets(rejections)
    return build


# ----------------------------------------------------------------------------------------- flow


@flow(name=FLOW_NAME, validate_parameters=False)
def build_kinematicparts20k(
    source: SourceParams = DEFAULTS.source,
    limit: int | None = DEFAULTS.limit,
    prefilter: PrefilterRules = DEFAULTS.prefilter,
    filters: FilterRules = DEFAULTS.filters,
    render: RenderSpec = DEFAULTS.render,
    lance_uri: str = DEFAULTS.lance_uri,
    cache_dir: str = DEFAULTS.cache_dir,
    fetch: FetchSettings = DEFAULTS.fetch,
    ray_address: str | None = DEFAULTS.ray_address,
    pool_size: int | None = DEFAULTS.pool_size,
    recycle_after: int = DEFAULTS.recycle_after,
    asset_timeout_s: float = DEFAULTS.asset_timeout_s,
    shard_size: int = DEFAULTS.shard_size,
) -> BuildReport:
    """Build or refresh KinematicParts20K into the Lance tables at ``lance_uri``.

    Parameters are those of :class:`schemas.params.BuildParams`; they are validated here, before any
    work, and a bad one fails the run with one line per wrong field.
    """
    params = BuildParams.parse(_as_data(locals()))
    start_reaper()  # nothing of this run outlives its driver, however it ends
    return run_build(params)


def run_build(params: BuildParams) -> BuildReport:
    """The flow's body, on validated parameters (call the flow, not this, to get a Prefect run)."""
    clock = _Clock()
    config_hash = params.render.config_hash()
    store = DatasetStore(params.lance_uri)
    build = BuildReport(lance_uri=params.lance_uri, config_hash=config_hash, code_version=code_version())
    build.versions_before = _versions(store)
    started_from = {table: store.version(table) for table in TABLES}
    build.dead_runs = find_dead_runs(params.lance_uri)

    candidates = Path(params.cache_dir) / "candidates"
    remove_dead_owners(candidates)  # the candidates files of builds that were killed
    run_files = f"{os.getpid()}.{uuid4().hex}"
    staging, todo = candidates / f"{run_files}.parquet", candidates / f"{run_files}.todo.parquet"
    try:
        found = discover_and_prefilter(params, str(staging))
        clock.lap(build, "discover+prefilter")
        per_source = plan(found, params.lance_uri, config_hash, params.filters.rules_hash(), str(todo))
        staging.unlink(missing_ok=True)
        clock.lap(build, "plan")
        to_do = sum(per_source.values())
        build.candidates, build.already_decided = found.accepted, found.accepted - to_do
        get_run_logger().info(build.resume_line())
        reasons: Counter[str] = Counter()
        rejections = list(found.first_rejections)
        sheet_ids: list[str] = []
        if to_do:
            fetch = fetch_settings(params, per_source.get("sketchfab", 0) > 0)
            build.render, reasons, render_rejections, sheet_ids = render_assets(str(todo), to_do, params, fetch)
            rejections += render_rejections
    finally:
        staging.unlink(missing_ok=True)
        todo.unlink(missing_ok=True)
    clock.lap(build, "render")

    build.discovered, build.prefilter_rejected = found.scanned, found.rejected
    build.fetch_rejected = sum(n for reason, n in reasons.items() if reason.startswith("fetch/"))
    build.fetched = len(build.render.processed_sha256) - build.fetch_rejected
    build.rejection_reasons = dict(Counter(found.reasons) + reasons)
    build.tables = compact_tables(params.lance_uri, started_from)
    build.versions = _versions(store)
    build = publish(build, sheet_ids, params.cache_dir, rejections[:REJECTED_ASSET_ROWS])
    clock.lap(build, "report")
    return build


# ------------------------------------------------------------------------------------- helpers


def find_dead_runs(lance_uri: str) -> list[str]:
    """Label this run with its driver and table; mark Crashed the earlier runs on the table whose driver died."""
    run_id, run_name = prefect_flow_run.get_id(), prefect_flow_run.get_name()
    if run_id is None:
        return []
    table = table_identity(lance_uri)
    dead = crash_dead_runs(FLOW_NAME, table, UUID(run_id), run_name)
    claim(UUID(run_id), table)
    for run in dead:
        get_run_logger().warning("earlier run %s found dead and marked Crashed", run)
    return [str(run) for run in dead]


def table_identity(lance_uri: str) -> str:
    return lance_uri if "://" in lance_uri else str(Path(lance_uri).resolve())


def source_scan(params: BuildParams) -> Scan:
    """The source's annotations as a re-readable stream of Arrow batches (what the prefilter reads)."""
    source = params.source
    if source.kind == "objaverse-xl":
        return annotation_scan(objaverse_dir(source), source.objaverse_sources, source.offline, params.prefilter.file_types)
    if source.kind == "procedural":
        folder = Path(source.folder) if source.folder else Path(params.cache_dir) / "procedural"
        batch = assets_batch(generate_assets(source.count, folder, seed=source.seed))
    else:
        batch = assets_batch(discover_local(Path(source.folder)))
    return lambda: iter([batch])


def objaverse_dir(source: SourceParams) -> Path:
    return Path(source.objaverse_dir or "~/.objaverse").expanduser()


def fetch_settings(params: BuildParams, sketchfab_assets: bool) -> FetchSettings:
    """``params.fetch``, with the Sketchfab object index of the Objaverse download dir filled in when
    Sketchfab objects are to be fetched and no index was named (online, objaverse downloads it once)."""
    settings = params.fetch
    needs_index = params.source.kind == "objaverse-xl" and sketchfab_assets
    if settings.sketchfab_object_paths or not needs_index:
        return settings
    download_dir = objaverse_dir(params.source)
    try:
        index = sketchfab_object_index(download_dir, offline=params.source.offline)
    except Exception as exc:  # noqa: BLE001 - offline and absent, or the download failed: the run goes on
        # Each Sketchfab asset is then rejected (download_failed) with this path named; the others are fetched.
        get_run_logger().warning("no Sketchfab object index (%s)", redact(f"{type(exc).__name__}: {exc}")[:300])
        index = sketchfab_object_paths_file(download_dir)
    return settings.model_copy(update={"sketchfab_object_paths": str(index)})


def finished_assets(store: DatasetStore, config_hash: str, filter_rules_hash: str | None = None) -> set[str]:
    return store.finished_assets(config_hash, (*PRE_WORKER_STAGES, POOL_STAGE), filter_rules_hash)


def fetch_budget_s(settings: FetchSettings) -> float:
    """The longest a fetch with these settings can take (every attempt at its cap, every back-off)."""
    return (settings.retries + 1) * settings.attempt_seconds + settings.retries * settings.backoff_max_seconds


def outcome_rows(outcome: Outcome, config_hash: str) -> tuple[StagedSamples | None, list[Rejection], AssetRow | None]:
    """A pool outcome as rows: its staged samples, its rejections, and its ``assets`` row (the marker)."""
    asset = outcome.job.asset
    if outcome.failure is not None:
        # a failed fetch is not about this render configuration: a refresh with another one reuses it
        stamp = {"config_hash": "" if outcome.stage == "fetch" else config_hash, "code_version": code_version()}
        return None, [_rejection(asset, outcome.failure, outcome.detail, stage=outcome.stage, **stamp)], None
    result = outcome.result
    probe = result.probe
    if probe is None:  # the worker gave up before probing: record why, so the asset is not redone
        first = result.rejections[0] if result.rejections else None
        probe = ProbeReport(
            sha256=asset.sha256, ok=False, reason=first.reason if first else None, detail=first.detail if first else ""
        )
    row = AssetRow(asset=result.asset, probe=probe, config_hash=config_hash, code_version=code_version())
    return result.staged, list(result.rejections), row


def pool_shape(params: BuildParams, connection: RayConnection) -> tuple[int, float]:
    """(workers, CPUs reserved per worker): one worker per ``render.threads`` CPUs by default; more
    workers than that share CPUs fractionally, so the pool never waits on CPUs Ray cannot grant."""
    cpus = max(connection.cpus, 1.0)
    threads = params.render.threads or cpus
    size = params.pool_size or max(1, int(cpus // threads))
    return size, min(float(threads), cpus / size)


def stored_sheet_entries(
    store: DatasetStore, config_hash: str, ids: list[str] | None = None, n: int = CONTACT_SHEET_SAMPLES
) -> list[SheetEntry]:
    """The samples ``ids`` (the first ``n``), or when none are given, the first samples of this
    configuration in the table (a refresh that rendered nothing new)."""
    if not ids:  # the first in table order: a scan that stops at n, not the configuration's every id
        where = f"config_hash = {sql_literal(config_hash)}"
        ids = store.read("samples", columns=["sample_id"], filter=where, limit=n).column("sample_id").to_pylist()
    ids = ids[:n]
    if not ids:
        return []
    where = f"sample_id IN ({', '.join(map(sql_literal, ids))})"
    rows = store.read_samples(columns=["sample_id", "file_identifier", "clip"], filter=where).to_pylist()
    ids = [r["sample_id"] for r in rows]
    # Lazy blob files: the sheet reads the first frame of each view, never a whole frame pack
    # (hundreds of MB a sample at 24 x 24 x 576 px) into the driver.
    rgb, parts = store.take_blobs("rgb", ids), store.take_blobs("parts", ids)
    return [SheetEntry(f"{r['file_identifier']} {r['clip']}", c, p) for r, c, p in zip(rows, rgb, parts)]


def _worker_factory(spec: RenderSpec, filters: FilterRules, log_dir: str, lance_uri: str) -> Any:
    # A function of an importable module: Prefect loads this file by path (as module ``build``), which
    # Ray's workers could not import to unpickle a function defined here.
    from pipelines.build.worker import (
        worker_logging_to,  # imports bpy: only where a worker is built
    )

    # writes its samples to the table and reuses the stored part decisions
    return partial(worker_logging_to, log_dir, spec, filters, lance_uri, True)


def _record(summary: RenderSummary, outcome: Outcome, staged: StagedSamples | None) -> None:
    summary.processed_sha256.append(outcome.job.asset.sha256)
    summary.accepted_assets += bool(staged and staged.n_samples)
    if outcome.result is not None:
        summary.n_renders += outcome.result.n_renders
    if outcome.worker is not None:
        worker = outcome.worker
        for values, value in (
            (summary.worker_pids, worker.pid),
            (summary.actor_pids, worker.actor_pid),
            (summary.node_ips, worker.node_ip),
            (summary.node_ids, worker.node_id),
        ):
            if value not in values:
                values.append(value)


def _rejection(asset: AssetRef, reason: RejectReason, detail: str, **stamp: str) -> Rejection:
    return Rejection(
        sha256=asset.sha256, file_identifier=asset.file_identifier, source=asset.source, reason=reason, detail=detail, **stamp
    )


class _Shard:
    """Rows of finished assets waiting to be committed together (small rows: samples stay staged in
    the table's storage, written by the workers)."""

    def __init__(self, lance_uri: str, summary: RenderSummary, progress: RenderProgress):
        self.lance_uri, self.summary, self.progress = lance_uri, summary, progress
        self.first_rejections: list[Rejection] = []  # for the run's artifact
        self.sheet_ids: list[str] = []  # the first samples this run added
        self._pending: deque[Any] = deque()  # PrefectFutures of the shards handed over, oldest first
        self._empty()

    def _empty(self) -> None:
        self.staged: list[StagedSamples] = []
        self.rejections: list[Rejection] = []
        self.probes: list[ProbeRow] = []
        self.assets: list[AssetRow] = []
        self.size, self.opened = 0, time.monotonic()

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.opened

    def add(
        self, sha256: str, staged: StagedSamples | None, rejections: list[Rejection], row: AssetRow | None,
        probe: ProbeReport | None,
    ) -> None:
        """One finished asset; ``probe`` is the worker's report (None when it never probed)."""
        if not self.size:
            self.opened = time.monotonic()
        self.staged += [staged] if staged is not None else []
        self.rejections += rejections
        self.first_rejections += rejections[: max(0, REJECTED_ASSET_ROWS - len(self.first_rejections))]
        self.probes += [ProbeRow(sha256=probe.sha256, probe_version=probe_version(), probe=probe)] if probe is not None else []
        self.assets += [row] if row is not None else []
        self.size += 1

    def commit(self, final: bool = False) -> None:
        """Hand the shard to a ``commit-shard`` task run in a thread, so the pool keeps dispatching
        while it commits. Shards commit one at a time, in order (each waits for the one before);
        at most ``PENDING_SHARDS`` wait, past that the caller waits for the oldest. ``final`` waits
        for them all."""
        if self.size:
            while len(self._pending) >= PENDING_SHARDS:
                self._settle()
            after = [self._pending[-1]] if self._pending else None
            self._pending.append(
                commit_shard.submit(self.lance_uri, self.staged, self.rejections, self.probes, self.assets, wait_for=after)
            )
            self._empty()
        while final and self._pending:
            self._settle(final=len(self._pending) == 1)

    def _settle(self, final: bool = False) -> None:
        samples, rejections, assets, added_ids = self._pending.popleft().result()  # a failed commit fails the run here
        self.summary.samples_written += samples
        self.summary.rejections_written += rejections
        self.summary.assets_written += assets
        self.summary.shards += 1
        self.sheet_ids += added_ids[: max(0, CONTACT_SHEET_SAMPLES - len(self.sheet_ids))]
        self.progress.committed(samples, final)


class _Clock:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def lap(self, build: BuildReport, stage: str) -> None:
        now = time.monotonic()
        build.seconds[stage] = round(now - self.last, 3)
        self.last = now


def _versions(store: DatasetStore) -> dict[str, int]:
    return {table: store.version(table) for table in ("samples", "assets", "rejections")}


def _as_data(arguments: dict[str, Any]) -> dict[str, Any]:
    """Flow arguments as plain data, whether they came in as models (Python) or JSON (a deployment)."""
    return {k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in arguments.items()}
