"""The build's stages that need no Ray, no Blender and no Prefect server, on real files and tables:
which assets a build may skip (an asset is finished only once its ``assets`` row, the last commit of
its shard, is in), how pool outcomes become rows, how the pool is sized."""

from __future__ import annotations

import pytest

from flows.build import finished_assets, outcome_rows, pool_shape
from flows.ray_cluster import RayConnection
from flows.render_pool import Job, Outcome, WorkerInfo
from pipelines.build.store import DatasetStore
from pipelines.build.worker import WorkResult
from schemas.assets import AssetRef, ProbeReport, Rejection, RejectReason
from schemas.params import BuildParams
from schemas.render import RenderSpec
from schemas.tables import AssetRow
from tests.synthetic_samples import synthetic_sample

SPEC = RenderSpec(n_views=2, n_frames=2, resolution=16)
CONFIG = SPEC.config_hash()


def asset(n: int) -> AssetRef:
    return AssetRef(file_identifier=f"local://{n}", source="local", file_type="glb", sha256=f"{n:064x}")


def rejection(n: int, stage: str, reason: RejectReason, config_hash: str = CONFIG, clip: str = "") -> Rejection:
    a = asset(n)
    return Rejection(
        sha256=a.sha256, file_identifier=a.file_identifier, source=a.source, stage=stage, reason=reason,
        clip=clip, config_hash=config_hash,
    )


def marker(n: int, config_hash: str = CONFIG) -> AssetRow:
    return AssetRow(asset=asset(n), probe=ProbeReport(sha256=asset(n).sha256, ok=True), config_hash=config_hash)


@pytest.fixture
def store(tmp_path) -> DatasetStore:
    return DatasetStore(str(tmp_path / "kp20k.lance"))


def test_samples_without_their_assets_row_are_not_finished(store):
    store.write_samples([synthetic_sample(asset(1).sha256, spec=SPEC)])  # killed before the marker
    assert asset(1).sha256 not in finished_assets(store, CONFIG)
    store.write_assets([marker(1)])
    assert finished_assets(store, CONFIG) == {asset(1).sha256}


def test_a_clip_rejection_without_its_assets_row_is_not_finished(store):
    store.write_samples([synthetic_sample(asset(2).sha256, clip="walk", spec=SPEC)])
    store.write_rejections([rejection(2, "filter", RejectReason.static_animation, clip="idle")])
    assert finished_assets(store, CONFIG) == set()
    store.write_assets([marker(2)])
    assert finished_assets(store, CONFIG) == {asset(2).sha256}


def test_decisions_taken_before_any_worker_need_no_marker(store):
    store.write_rejections([rejection(3, "fetch", RejectReason.hash_mismatch, config_hash="")])
    assert finished_assets(store, CONFIG) == {asset(3).sha256}


def test_timeouts_and_crashes_are_tried_again(store):
    store.write_rejections([rejection(4, "pool", RejectReason.timeout), rejection(5, "pool", RejectReason.crashed)])
    assert finished_assets(store, CONFIG) == set()


def test_work_under_another_render_config_does_not_count(store):
    store.write_samples([synthetic_sample(asset(6).sha256, spec=SPEC)])
    store.write_assets([marker(6)])
    other = RenderSpec(n_views=2, n_frames=2, resolution=24).config_hash()
    assert finished_assets(store, other) == set()


def test_a_pool_failure_becomes_one_transient_rejection_and_no_marker():
    outcome = Outcome(Job(asset(7)), WorkerInfo(1, "n", "127.0.0.1", "a", 2), failure=RejectReason.timeout, detail="no result")
    staged, rejections, row = outcome_rows(outcome, CONFIG)
    assert staged is None and row is None
    assert [(r.stage, r.reason, r.config_hash) for r in rejections] == [("pool", RejectReason.timeout, CONFIG)]


def test_a_result_without_a_probe_still_gets_its_marker_with_the_reason():
    why = rejection(8, "fetch", RejectReason.file_missing)
    result = WorkResult(asset=asset(8), probe=None, rejections=[why])
    _, rejections, row = outcome_rows(Outcome(Job(asset(8)), None, result=result), CONFIG)
    assert rejections == [why]
    assert (row.probe.ok, row.probe.reason, row.config_hash) == (False, RejectReason.file_missing, CONFIG)


@pytest.mark.parametrize(
    ("cpus", "threads", "pool_size", "expected"),
    [(2, 1, None, (2, 1.0)), (2, 1, 4, (4, 0.5)), (2, 0, None, (1, 2.0)), (16, 2, None, (8, 2.0)), (1, 1, 2, (2, 0.5))],
)
def test_pool_shape_never_asks_ray_for_more_cpus_than_it_has(cpus, threads, pool_size, expected):
    params = BuildParams.parse({"render": {"threads": threads}, "pool_size": pool_size})
    size, per_worker = pool_shape(params, RayConnection("127.0.0.1:1", float(cpus), owned=False))
    assert (size, per_worker) == expected
    assert size * per_worker <= cpus


def test_a_failed_fetch_is_a_config_independent_rejection_that_stands_alone(store):
    outcome = Outcome(Job(asset(9)), None, failure=RejectReason.hash_mismatch, detail="bytes hash to 00..", stage="fetch")
    staged, rejections, row = outcome_rows(outcome, CONFIG)
    assert staged is None and row is None
    assert [(r.stage, r.reason, r.config_hash) for r in rejections] == [("fetch", RejectReason.hash_mismatch, "")]
    store.write_rejections(rejections)
    assert finished_assets(store, CONFIG) == {asset(9).sha256}  # decided, with no assets row
