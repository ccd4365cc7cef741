"""A build killed with SIGKILL mid-render and run again ends with exactly the rows of an uninterrupted
build, the rerun renders no asset the killed run had committed, says it is resuming, and the killed run
shows as Crashed (not Running) in Prefect."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, TaskRunFilter, TaskRunFilterFlowRunId
from prefect.client.schemas.objects import StateType

from flows.build import FLOW_NAME, build_kinematicparts20k
from flows.dead_runs import TABLE_LABEL
from pipelines.build.sources.procedural import generate_assets
from pipelines.build.store import KEY_COLUMN, DatasetStore, StoreError, open_table
from tests.flows.conftest import TINY_RENDER, cli_build, kill_session

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session", "prefect_api")]

N_ASSETS = 8
# One worker, one asset per commit: the kill lands between commits of a run that is still rendering.
RUN = {"pool_size": 1, "shard_size": 1}


def table_keys(lance: str) -> dict[str, list[str]]:
    store = DatasetStore(lance)
    return {table: sorted(store.read(table, columns=[key]).column(key).to_pylist()) for table, key in KEY_COLUMN.items()}


def committed_assets(lance: str) -> set[str]:
    """Read-only (opening a DatasetStore would create the tables, racing the build that creates them)."""
    try:
        table = open_table(lance, "assets")
    except StoreError:  # not created yet
        return set()
    return {row["sha256"] for row in table.to_table(columns=["asset"]).column("asset").to_pylist()}


def kill_once_committed(run, lance: str, log: Path, n: int) -> set[str]:
    """SIGKILL the build's whole process group once ``n`` assets are committed; the assets committed."""
    try:
        deadline = time.monotonic() + 300
        while len(committed_assets(lance)) < n:
            assert run.poll() is None, f"the build ended before it could be killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(run.pid, signal.SIGKILL)
    finally:
        kill_session(run)
    return committed_assets(lance)


def test_sigkill_midway_then_rerun_gives_exactly_the_uninterrupted_rows(tmp_path, prefect_stack):
    folder = tmp_path / "assets"
    assets = generate_assets(N_ASSETS, folder, seed=70)
    source = {"kind": "local", "folder": str(folder)}

    killed_lance = str(tmp_path / "killed.lance")
    log = tmp_path / "killed.log"
    run = cli_build(
        ["--source", "local", "--folder", str(folder), "--lance", killed_lance, "--cache-dir", str(tmp_path / "cache"),
         "--workers", "1", "--shard-size", "1"],
        prefect_stack, log,
    )
    done_before = kill_once_committed(run, killed_lance, log, 2)
    assert 2 <= len(done_before) < N_ASSETS, "the kill must land mid-render"

    state = build_kinematicparts20k(
        source=source, render=TINY_RENDER, lance_uri=killed_lance, cache_dir=str(tmp_path / "cache"), **RUN,
        return_state=True,
    )
    assert state.is_completed(), state.message
    rerun, rerun_id = state.result(), state.state_details.flow_run_id
    assert rerun.already_decided == len(done_before)
    assert rerun.resume_line().startswith(
        f"resuming: {len(done_before)} of {N_ASSETS} assets already decided, {N_ASSETS - len(done_before)} to go"
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])))
        on_table = [r for r in runs if r.labels.get(TABLE_LABEL) == str(Path(killed_lance).resolve())]
        (killed_run,) = [r for r in on_table if r.id != rerun_id]
        assert killed_run.state.type is StateType.CRASHED, killed_run.state
        assert str(rerun_id) in killed_run.state.message
        assert client.read_flow_run(rerun_id).state.type is StateType.COMPLETED
        left_running = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[killed_run.id])),
        )
        assert not [t.name for t in left_running if t.state.type is StateType.RUNNING]
    assert any(str(killed_run.id) in dead for dead in rerun.dead_runs)
    assert str(killed_run.id) in rerun.resume_line()
    assert set(rerun.render.processed_sha256).isdisjoint(done_before)
    assert set(rerun.render.processed_sha256) | done_before == {a.sha256 for a in assets}

    whole_lance = str(tmp_path / "whole.lance")
    build_kinematicparts20k(
        source=source, render=TINY_RENDER, lance_uri=whole_lance, cache_dir=str(tmp_path / "cache-whole"), **RUN
    )
    killed, whole = table_keys(killed_lance), table_keys(whole_lance)
    for table in killed:
        assert len(killed[table]) == len(set(killed[table])), f"duplicate {table} rows"
        assert killed[table] == whole[table], f"{table} differs from the uninterrupted build"
    assert len(whole["samples"]) >= N_ASSETS


def finished_build(arguments: list[str], stack: dict[str, str], log: Path) -> dict:
    """``kp20k build --json`` run to its end in a subprocess (which starts its own Ray, so its workers
    see this process's environment, the S3 variables included); its report."""
    run = cli_build(arguments, stack, log)
    try:
        assert run.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        kill_session(run)
    return json.loads(log.read_text().strip().splitlines()[-1])


def test_sigkill_midway_on_object_storage_then_rerun_gives_exactly_the_uninterrupted_keys(tmp_path, prefect_stack, s3_store):
    """Two workers write their samples straight to ``s3://`` (a moto server on 127.0.0.1, reached
    through the usual AWS variables); the build is SIGKILLed once two assets are committed, rerun,
    and ends with exactly the keys of an uninterrupted build on another prefix."""
    folder = tmp_path / "assets"
    assets = generate_assets(6, folder, seed=71)
    common = ["--source", "local", "--folder", str(folder), "--workers", "2", "--shard-size", "1"]
    killed_lance = f"{s3_store.uri}/killed"
    log = tmp_path / "killed.log"
    run = cli_build([*common, "--lance", killed_lance, "--cache-dir", str(tmp_path / "cache")], prefect_stack, log)
    done_before = kill_once_committed(run, killed_lance, log, 2)
    assert 2 <= len(done_before) < len(assets), "the kill must land mid-render"

    rerun = finished_build([*common, "--lance", killed_lance, "--cache-dir", str(tmp_path / "cache")], prefect_stack,
                           tmp_path / "rerun.log")
    assert rerun["already_decided"] == len(done_before)
    assert set(rerun["render"]["processed_sha256"]).isdisjoint(done_before)
    assert len(rerun["render"]["worker_pids"]) == 2  # both workers wrote

    whole_lance = f"{s3_store.uri}/whole"
    finished_build([*common, "--lance", whole_lance, "--cache-dir", str(tmp_path / "cache-whole")], prefect_stack,
                   tmp_path / "whole.log")
    killed, whole = table_keys(killed_lance), table_keys(whole_lance)
    for table in killed:
        assert len(killed[table]) == len(set(killed[table])), f"duplicate {table} rows"
        assert killed[table] == whole[table], f"{table} differs from the uninterrupted build"
    assert len(whole["samples"]) >= len(assets)
