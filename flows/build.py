"""The flow ``build-kinematicparts20k``: discover -> prefilter -> plan -> fetch -> render (Ray pool) -> write -> report.

A refresh is the same flow run again: the plan skips every asset the store already decided for this
render configuration, so unchanged work opens no Blender, and a changed render spec renders new rows
beside the old ones.

Resumability: the driver commits finished assets in shards of ``shard_size``, each shard in the
order samples -> rejections -> assets, and an asset a worker handled counts as finished only once
its ``assets`` row (written last) is in. A run killed at any point loses at most the shard in
flight; the rerun redoes exactly those assets, and the store's insert-if-new writes add no duplicate.

Scale: discovery and the prefilter stream the annotations as Arrow batches into a candidates file
and the ``rejections`` table (``pipelines.build.candidates``); Prefect results carry counts, never a
row per annotation. No stage is cached by Prefect, on purpose: discovery must see new files, and the
store, not a Prefect cache that could outlive a deleted table, is what says which assets are done
(prefilter rejections already stored for the same rules are not written again).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
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
from pipelines.build.fetch import FetchCache, FetchError, redact
from pipelines.build.fetch import fetch as fetch_asset
from pipelines.build.candidates import read_candidates, stage_candidates
from pipelines.build.prefilter import Scan, assets_batch
from pipelines.build.sources.local import discover_local
from pipelines.build.sources.objaverse_xl import (
    annotation_scan,
    sketchfab_object_index,
    sketchfab_object_paths_file,
)
from pipelines.build.sources.procedural import generate_assets
from pipelines.build.store import DatasetStore, absolute_uri
from pipelines.files import keep_newest
from pipelines.version import code_version, probe_version
from schemas.assets import AssetRef, ProbeReport, Rejection, RejectReason
from schemas.fetch import FetchSettings
from schemas.filters import FilterRules
from schemas.params import BuildParams, SourceParams
from schemas.prefilter import CandidateSummary, PrefilterRules
from schemas.render import RenderSpec
from schemas.samples import Sample
from schemas.tables import AssetRow, ProbeRow

FLOW_NAME = "build-kinematicparts20k"
DEFAULTS = BuildParams()
# Rejections decided before any worker saw the asset; every other stage belongs to a worker.
PRE_WORKER_STAGES = ("prefilter", "fetch")
POOL_STAGE = "pool"  # timeouts and crashes, decided by the pool, not by the worker
FETCH_RETRIES = 2
FETCH_THREADS = 8  # downloads wait on the network, not the CPU
WORKER_LOGS_KEPT = 64  # one log per Blender process under <cache_dir>/logs


# ---------------------------------------------------------------------------------------- tasks


@task(name="discover-prefilter", cache_policy=NO_CACHE)
def discover_and_prefilter(params: BuildParams, staging: str) -> CandidateSummary:
    """Candidates from the source, streamed through the prefilter into the file ``staging``, prefilter
    rejections into the store; returns counts only. Never cached, so a refresh sees files added since."""
    store = DatasetStore(params.lance_uri)
    return stage_candidates(source_scan(params), params.prefilter, store, Path(staging), params.limit)


@task(name="plan", cache_policy=NO_CACHE)
def plan(candidates: CandidateSummary, lance_uri: str, config_hash: str, filter_rules_hash: str) -> list[AssetRef]:
    """The candidates this render configuration and these filter rules have not finished yet (a no-op
    refresh returns []; changed filters bring back only the assets a filter had rejected)."""
    return read_candidates(candidates.path, finished_assets(DatasetStore(lance_uri), config_hash, filter_rules_hash))


@task(name="fetch", cache_policy=NO_CACHE, retries=FETCH_RETRIES, retry_delay_seconds=5)
def fetch_assets(
    assets: list[AssetRef], cache_dir: str, settings: FetchSettings | None = None
) -> tuple[list[AssetRef], list[Rejection]]:
    """Bring every asset into the content-addressed cache. A transient failure (``download_failed``)
    fails the task so Prefect retries it (objects already cached cost one hash check); on the last
    attempt it becomes a rejection row, which a later refresh tries again."""
    cache = FetchCache(Path(cache_dir))

    def attempt(asset: AssetRef) -> AssetRef | FetchError:
        try:
            return fetch_asset(asset, cache, settings)
        except FetchError as exc:
            return exc

    fetched, rejections, transient = [], [], []
    with ThreadPoolExecutor(FETCH_THREADS) as downloads:
        for asset, got in zip(assets, downloads.map(attempt, assets)):
            if isinstance(got, AssetRef):
                fetched.append(got)
            else:
                (transient if got.reason is RejectReason.download_failed else rejections).append((asset, got))
    context = TaskRunContext.get()
    if transient and context is not None and context.task_run.run_count <= FETCH_RETRIES:
        raise RuntimeError(f"{len(transient)} downloads failed transiently, e.g. {transient[0][1]}")
    stamp = {"stage": "fetch", "config_hash": "", "code_version": code_version()}
    return fetched, [_rejection(asset, exc.reason, exc.detail, **stamp) for asset, exc in rejections + transient]


@task(name="commit-fetch-rejections", cache_policy=NO_CACHE)
def commit_fetch_rejections(lance_uri: str, rejections: list[Rejection]) -> int:
    """Prefilter rejections are written by discover-prefilter itself, in batches."""
    return DatasetStore(lance_uri).write_rejections(rejections)


@task(name="commit-shard", cache_policy=NO_CACHE)
def commit_shard(
    lance_uri: str, samples: list[Sample], rejections: list[Rejection], probes: list[ProbeRow], assets: list[AssetRow]
) -> tuple[int, int, int]:
    """One shard, in completion order: the probes (for every later render configuration) before the
    ``assets`` rows, which go last, as the marker of finished work."""
    store = DatasetStore(lance_uri)
    added = store.write_samples(samples), store.write_rejections(rejections)
    store.write_probes(probes)
    return (*added, store.write_assets(assets))


@task(name="render", cache_policy=NO_CACHE)
def render_assets(assets: list[AssetRef], params: BuildParams) -> tuple[RenderSummary, list[Rejection], list[SheetEntry]]:
    """Probe, filter, split into parts and render every asset in the Ray pool, committing in shards."""
    started = time.monotonic()
    connection = connect(params.ray_address)
    summary = RenderSummary(gcs_address=connection.gcs_address, ray_start_s=time.monotonic() - started)
    try:
        rejections, sheet = _render_in_pool(connection, assets, params, summary)
    finally:
        stopping = time.monotonic()
        connection.close()
        summary.ray_stop_s = time.monotonic() - stopping
    summary.seconds = time.monotonic() - started
    return summary, rejections, sheet


def _render_in_pool(
    connection: RayConnection, assets: list[AssetRef], params: BuildParams, summary: RenderSummary
) -> tuple[list[Rejection], list[SheetEntry]]:
    summary.pool_size, cpus_per_worker = pool_shape(params, connection)
    get_run_logger().info("rendering %d assets on %s with %d workers", len(assets), connection.gcs_address, summary.pool_size)
    progress = RenderProgress(total=len(assets))
    progress.start()
    shard = _Shard(params.lance_uri, summary)
    rejections: list[Rejection] = []
    sheet: list[SheetEntry] = []
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
        on_event=first_worker,
    )
    with pool:
        try:
            for outcome in pool.imap(Job(a) for a in assets):
                samples, found, row = outcome_rows(outcome, params.render.config_hash())
                _record(summary, outcome, samples)
                rejections += found
                room = CONTACT_SHEET_SAMPLES - len(sheet)
                sheet += [SheetEntry(f"{s.file_identifier} {s.clip}", s.rgb, s.parts) for s in samples[:room]]
                shard.add(samples, found, row, outcome.result.probe if outcome.result is not None else None)
                if shard.size >= params.shard_size:
                    shard.commit()
                progress.advance()
        finally:
            shard.commit()  # also when the pool gives up: finished assets are not redone
    stats = pool.stats
    summary.workers_started, summary.recycled = stats.workers_started, stats.recycled
    summary.timeouts, summary.crashes = stats.timeouts, stats.crashes
    return rejections, sheet


@task(name="compact", cache_policy=NO_CACHE)
def compact_tables(lance_uri: str) -> dict[str, tuple[int, int]]:
    """Fragments and versions kept bounded (``DatasetStore.compact``): table -> (fragments, versions).
    Upkeep never fails a build whose rows are committed: a failure is logged and tried by the next."""
    try:
        return DatasetStore(lance_uri).compact()
    except (OSError, ValueError) as exc:
        get_run_logger().warning("tables not compacted: %s", f"{type(exc).__name__}: {exc}"[:300])
        return {}


@task(name="report", cache_policy=NO_CACHE)
def publish(build: BuildReport, sheet: list[SheetEntry], cache_dir: str, rejections: list[Rejection]) -> BuildReport:
    if not sheet:
        sheet = stored_sheet_entries(DatasetStore(build.lance_uri), build.config_hash)
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
    build.dead_runs = find_dead_runs(params.lance_uri)

    candidates = Path(params.cache_dir) / "candidates"
    remove_dead_owners(candidates)  # the candidates files of builds that were killed
    staging = candidates / f"{os.getpid()}.{uuid4().hex}.parquet"
    try:
        found = discover_and_prefilter(params, str(staging))
        clock.lap(build, "discover+prefilter")
        todo = plan(found, params.lance_uri, config_hash, params.filters.rules_hash())
    finally:
        staging.unlink(missing_ok=True)
    clock.lap(build, "plan")
    build.candidates, build.already_decided = found.accepted, found.accepted - len(todo)
    get_run_logger().info(build.resume_line())
    fetched, fetch_rejections = fetch_assets(todo, params.cache_dir, fetch_settings(params, todo)) if todo else ([], [])
    commit_fetch_rejections(params.lance_uri, fetch_rejections)
    clock.lap(build, "fetch")
    sheet: list[SheetEntry] = []
    rejections = list(found.first_rejections)
    if fetched:
        build.render, render_rejections, sheet = render_assets(fetched, params)
        rejections += render_rejections
    clock.lap(build, "render")

    build.discovered, build.prefilter_rejected = found.scanned, found.rejected
    build.fetched, build.fetch_rejected = len(fetched), len(fetch_rejections)
    rejections += fetch_rejections
    build.rejection_reasons = dict(Counter(found.reasons) + count_reasons(rejections[len(found.first_rejections):]))
    build.tables = compact_tables(params.lance_uri)
    build.versions = _versions(store)
    build = publish(build, sheet, params.cache_dir, rejections[:REJECTED_ASSET_ROWS])
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


def fetch_settings(params: BuildParams, assets: list[AssetRef]) -> FetchSettings:
    """``params.fetch``, with the Sketchfab object index of the Objaverse download dir filled in when
    Sketchfab objects are to be fetched and no index was named (online, objaverse downloads it once)."""
    settings = params.fetch
    needs_index = params.source.kind == "objaverse-xl" and any(a.source == "sketchfab" for a in assets)
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


def outcome_rows(outcome: Outcome, config_hash: str) -> tuple[list[Sample], list[Rejection], AssetRow | None]:
    """A pool outcome as rows: its samples, its rejections, and its ``assets`` row (the marker)."""
    asset = outcome.job.asset
    if outcome.failure is not None:
        rejection = _rejection(
            asset, outcome.failure, outcome.detail, stage=POOL_STAGE, config_hash=config_hash, code_version=code_version()
        )
        return [], [rejection], None
    result = outcome.result
    probe = result.probe
    if probe is None:  # the worker gave up before probing: record why, so the asset is not redone
        first = result.rejections[0] if result.rejections else None
        probe = ProbeReport(
            sha256=asset.sha256, ok=False, reason=first.reason if first else None, detail=first.detail if first else ""
        )
    row = AssetRow(asset=result.asset, probe=probe, config_hash=config_hash, code_version=code_version())
    return list(result.samples), list(result.rejections), row


def pool_shape(params: BuildParams, connection: RayConnection) -> tuple[int, float]:
    """(workers, CPUs reserved per worker): one worker per ``render.threads`` CPUs by default; more
    workers than that share CPUs fractionally, so the pool never waits on CPUs Ray cannot grant."""
    cpus = max(connection.cpus, 1.0)
    threads = params.render.threads or cpus
    size = params.pool_size or max(1, int(cpus // threads))
    return size, min(float(threads), cpus / size)


def stored_sheet_entries(store: DatasetStore, config_hash: str, n: int = CONTACT_SHEET_SAMPLES) -> list[SheetEntry]:
    """Samples already in the table (for a refresh that rendered nothing new)."""
    ids = sorted(store.existing_sample_ids(config_hash))[:n]
    if not ids:
        return []
    where = "sample_id IN (" + ", ".join(f"'{i}'" for i in ids) + ")"
    rows = store.read_samples(columns=["file_identifier", "clip", "rgb", "parts"], filter=where).to_pylist()
    return [SheetEntry(f"{r['file_identifier']} {r['clip']}", r["rgb"], r["parts"]) for r in rows]


def _worker_factory(spec: RenderSpec, filters: FilterRules, log_dir: str, lance_uri: str) -> Any:
    # A function of an importable module: Prefect loads this file by path (as module ``build``), which
    # Ray's workers could not import to unpickle a function defined here.
    from pipelines.build.worker import (
        worker_logging_to,  # imports bpy: only where a worker is built
    )

    return partial(worker_logging_to, log_dir, spec, filters, lance_uri)  # reuses the stored part decisions


def _record(summary: RenderSummary, outcome: Outcome, samples: list[Sample]) -> None:
    summary.processed_sha256.append(outcome.job.asset.sha256)
    summary.accepted_assets += bool(samples)
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
    """Rows of finished assets waiting to be committed together."""

    def __init__(self, lance_uri: str, summary: RenderSummary):
        self.lance_uri, self.summary = lance_uri, summary
        self.samples: list[Sample] = []
        self.rejections: list[Rejection] = []
        self.probes: list[ProbeRow] = []
        self.assets: list[AssetRow] = []
        self.size = 0

    def add(self, samples: list[Sample], rejections: list[Rejection], row: AssetRow | None, probe: ProbeReport | None) -> None:
        """One finished asset; ``probe`` is the worker's report (None when it never probed)."""
        self.samples += samples
        self.rejections += rejections
        self.probes += [ProbeRow(sha256=probe.sha256, probe_version=probe_version(), probe=probe)] if probe is not None else []
        self.assets += [row] if row is not None else []
        self.size += 1

    def commit(self) -> None:
        if not self.size:
            return
        added = commit_shard(self.lance_uri, self.samples, self.rejections, self.probes, self.assets)
        self.summary.samples_written += added[0]
        self.summary.rejections_written += added[1]
        self.summary.assets_written += added[2]
        self.summary.shards += 1
        self.samples, self.rejections, self.probes, self.assets, self.size = [], [], [], [], 0


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
