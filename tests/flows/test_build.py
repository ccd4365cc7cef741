"""The build flow end to end, in this process, on the local stack's Prefect server and the session's Ray:
real Blender workers, real Lance tables. One dataset is built, then refreshed in the ways a user would.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)

from flows.build import build_kinematicparts20k
from flows.cli import main
from flows.report import BuildReport
from pipelines.build.framepack import unpack
from pipelines.build.sources.procedural import generate_assets
from pipelines.build.store import DatasetStore
from schemas.render import RenderSpec
from schemas.samples import sample_key
from tests import factories
from tests.flows.artifact_images import embedded_png
from tests.flows.conftest import TINY_RENDER, process_alive

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


class Dataset:
    """One dataset under test: a folder of assets (the local source) and its tables."""

    def __init__(self, root: Path):
        self.assets = root / "assets"
        self.lance = str(root / "kp20k.lance")
        self.cache = str(root / "cache")

    def build(self, render: dict | None = None, **overrides):
        params = {
            "source": {"kind": "local", "folder": str(self.assets)},
            "render": render or TINY_RENDER,
            "lance_uri": self.lance,
            "cache_dir": self.cache,
            "pool_size": 2,
            "shard_size": 2,
            **overrides,
        }
        state = build_kinematicparts20k(**params, return_state=True)
        assert state.is_completed(), state.message
        return state.result(), state.state_details.flow_run_id

    def store(self) -> DatasetStore:
        return DatasetStore(self.lance)


def sample_rows(store: DatasetStore, version: int | None = None) -> list[dict]:
    return store.read_samples(version, columns=["sample_id", "sha256", "clip", "config_hash"]).to_pylist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Dataset:
    data = Dataset(tmp_path_factory.mktemp("build"))
    generate_assets(4, data.assets, seed=0)
    return data


FIRST_SHEET: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def first(dataset) -> tuple[BuildReport, object]:
    report, run_id = dataset.build()
    # Later builds of this module (in any order) rewrite the table's contact sheet: keep this one's.
    FIRST_SHEET["png"] = Path(report.contact_sheet).read_bytes()
    return report, run_id


def test_first_build_writes_exactly_one_row_per_rendered_clip(dataset, first):
    report, _ = first
    processed = set(report.render.processed_sha256)
    # Other tests of this module add assets and configurations: look at the first build's rows only.
    rows = [r for r in sample_rows(dataset.store(), report.versions["samples"]) if r["sha256"] in processed]
    ids = [r["sample_id"] for r in rows]
    assert len(ids) == len(set(ids)) == report.render.samples_written > 0
    assert all(r["sample_id"] == sample_key(r["sha256"], r["clip"], report.config_hash) for r in rows)
    # Every asset was decided: it has samples or rejections, and one assets row (the commit marker).
    assert len(processed) == 4 == report.fetched
    assets = dataset.store().read("assets", columns=["asset"], version=report.versions["assets"]).column("asset").to_pylist()
    assert sorted(a["sha256"] for a in assets) == sorted(processed)
    assert report.render.workers_started <= 2 and report.render.n_renders > 0
    assert report.render.shards == 2  # four assets, two per shard
    # a version per shard on the way, one left at the end (beside the empty table's first)
    assert report.tables["samples"][1] == report.tables["assets"][1] == 2


def test_worker_logs_are_kept_under_the_cache_one_per_worker_process(dataset, first):
    report, _ = first
    folder = Path(dataset.cache) / "logs"
    logs = [folder / f"blender-{socket.gethostname()}-{pid}.log" for pid in report.render.worker_pids]
    assert 1 <= len(logs) <= report.render.workers_started
    # Blender's own output (importer and renderer lines) went there, not to the terminal.
    assert all("glTF import finished" in log.read_text(errors="replace") for log in logs)


def test_rows_hold_the_tiny_grid(dataset, first):
    store = dataset.store()
    config = first[0].config_hash
    row = store.read_samples(columns=["rgb", "parts", "alpha", "n_views", "n_frames", "height"], filter=f"config_hash = '{config}'").to_pylist()[0]
    assert (row["n_views"], row["n_frames"], row["height"]) == (2, 2, 32)
    for column in ("rgb", "parts", "alpha"):
        assert unpack(row[column]).shape[:4] == (2, 2, 32, 32)


def test_artifacts_show_counts_reasons_progress_versions_and_the_contact_sheet(dataset, first):
    report, flow_run_id = first
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # the UI shows each shard as a task run of its own, completed
    shard_runs = [t for t in tasks if t.name.startswith("commit-shard")]
    assert len(shard_runs) == report.render.shards and {t.state.name for t in shard_runs} == {"Completed"}
    by_key = {a.key: a for a in sorted(artifacts, key=lambda a: a.created)}  # a key's latest version last
    assert set(by_key) == {
        "kp20k-stage-counts", "kp20k-rejection-reasons", "kp20k-lance-versions", "kp20k-render-progress",
        "kp20k-build-live", "kp20k-contact-sheet",
    }
    assert by_key["kp20k-render-progress"].data == 100.0
    # the live table, last published at the final shard: every asset decided, the ETA says so
    live = by_key["kp20k-build-live"].data
    assert f"| {len(report.render.processed_sha256)} | {len(report.render.processed_sha256)} | {report.render.accepted_assets} " \
        f"| {report.render.samples_written} | {report.render.shards} |" in live and "| done |" in live
    counts = by_key["kp20k-stage-counts"].data
    assert '"stage": "probe/filter/render", "in": 4' in counts
    versions = by_key["kp20k-lance-versions"].data
    assert f"lance.dataset('{dataset.lance}/samples.lance', version={report.versions['samples']})" in versions
    # The sheet is embedded as a data URI (the UI cannot load file:// URLs), alone in a markdown artifact
    # (an image artifact prints its URI as text), and written next to the table.
    png = embedded_png(by_key["kp20k-contact-sheet"].data)
    assert FIRST_SHEET["png"] == png
    assert Path(report.contact_sheet) == Path(dataset.lance).with_name("kp20k.contact-sheet.png").resolve()
    assert str(Path(report.contact_sheet)) in by_key["kp20k-contact-sheet"].description
    sheet = Image.open(io.BytesIO(png))
    n_samples, n_views = min(report.render.samples_written, 8), min(TINY_RENDER["n_views"], 4)
    # an RGB row above a part row per sample, one labelled column per view, at 128 px: it fits the UI's column
    assert sheet.height == 12 + 2 * 128 * n_samples and 128 * n_views < sheet.width <= 700


def test_an_unchanged_refresh_opens_no_blender(dataset, first):
    before = dataset.store()
    versions = {table: before.version(table) for table in ("samples", "assets", "rejections")}
    refresh, flow_run_id = dataset.build()
    assert refresh.already_decided == refresh.candidates >= 4 and refresh.fetched == 0
    assert refresh.render.workers_started == 0 and refresh.render.processed_sha256 == []
    assert refresh.render.gcs_address == ""  # Ray was not even asked
    assert refresh.versions == versions  # no empty commits
    assert sample_rows(before) == sample_rows(dataset.store())
    # its contact sheet shows the table's first samples of this configuration (it rendered none)
    assert refresh.contact_sheet
    n_config = sum(r["config_hash"] == refresh.config_hash for r in sample_rows(dataset.store()))
    assert Image.open(refresh.contact_sheet).height == 12 + 2 * 128 * min(n_config, 8)
    # The prefilter ran again (it must see new files) but wrote nothing: the rejections version above
    # is unchanged. Its Prefect result is counts, not the candidates.
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
    assert states["discover-prefilter"] == "Completed"
    assert "render" not in states


def test_a_refresh_renders_exactly_the_two_new_assets(dataset, first):
    old = {r["sample_id"] for r in sample_rows(dataset.store())}
    new_assets = generate_assets(2, dataset.assets / "new", seed=100)
    refresh, _ = dataset.build()
    assert sorted(refresh.render.processed_sha256) == sorted(a.sha256 for a in new_assets)
    rows = sample_rows(dataset.store())
    added = [r for r in rows if r["sample_id"] not in old]
    assert {r["sha256"] for r in added} == {a.sha256 for a in new_assets}
    assert len(rows) == len({r["sample_id"] for r in rows}) == len(old) + refresh.render.samples_written


def test_a_changed_render_spec_adds_new_rows_and_keeps_the_old_ones_readable(dataset, first):
    store = dataset.store()
    old_version = store.version("samples")
    old_rows = sample_rows(store)
    decisions = store.read("parts", columns=["decision_id", "sha256", "clip"]).to_pylist()
    probes_version = store.version("probes")
    changed = {**TINY_RENDER, "resolution": 40, "n_frames": 1}
    report, _ = dataset.build(render=changed)
    # nothing probed again: every asset's probe is stored under its bytes and the probe code, not the grid
    assert dataset.store().version("probes") == probes_version
    assert report.config_hash == RenderSpec(**changed).config_hash() != old_rows[0]["config_hash"]
    # every asset, again, under the new spec (however many earlier tests of this module added)
    assert len(report.render.processed_sha256) == report.candidates >= 4 and report.already_decided == 0
    rows = sample_rows(dataset.store())
    assert [r for r in rows if r["config_hash"] != report.config_hash] == old_rows
    assert {r["config_hash"] for r in rows} == {old_rows[0]["config_hash"], report.config_hash}
    assert sample_rows(store, old_version) == old_rows  # the old version reads back unchanged
    new_row = dataset.store().read_samples(columns=["rgb"], filter=f"config_hash = '{report.config_hash}'").to_pylist()[0]
    assert unpack(new_row["rgb"]).shape[2:4] == (40, 40)
    # the parts are the clip's: the new grid reused every stored decision and drew the same part maps
    assert dataset.store().read("parts", columns=["decision_id", "sha256", "clip"]).to_pylist() == decisions
    maps = dataset.store().read_samples(columns=["sha256", "clip", "config_hash", "part_map", "part_decision_id"]).to_pylist()
    by_clip: dict[tuple[str, str], list[dict]] = {}
    for row in maps:
        by_clip.setdefault((row["sha256"], row["clip"]), []).append(row)
    assert {(d["sha256"], d["clip"]) for d in decisions} == set(by_clip)
    for rows_of_clip in by_clip.values():
        assert {r["config_hash"] for r in rows_of_clip} == {old_rows[0]["config_hash"], report.config_hash}
        assert all(r["part_map"] == rows_of_clip[0]["part_map"] for r in rows_of_clip)
        assert len({r["part_decision_id"] for r in rows_of_clip}) == 1


def test_a_changed_thread_count_renders_nothing(dataset, first):
    before = dataset.store()
    versions = {table: before.version(table) for table in ("samples", "assets", "rejections")}
    refresh, _ = dataset.build(render={**TINY_RENDER, "threads": 2})
    assert refresh.config_hash == first[0].config_hash  # threads change how fast, not what is rendered
    assert refresh.already_decided == refresh.candidates >= 4 and refresh.render.processed_sha256 == []
    assert refresh.versions == versions


def test_relaxed_filters_re_decide_only_the_assets_a_filter_rejected(tmp_path):
    data = Dataset(tmp_path)
    generate_assets(2, data.assets, seed=7)
    factories.truncated_glb(data.assets)  # rejected by the probe, whatever the filters
    strict, _ = data.build(filters={"max_bones": 2})
    rows = data.store().read("rejections", columns=["sha256", "stage"]).to_pylist()
    by_filter = {r["sha256"] for r in rows if r["stage"] == "filter"}
    assert by_filter and {r["stage"] for r in rows} >= {"probe", "filter"}
    probes = data.store().read("probes", columns=["probe_key"]).num_rows
    assert probes == len(strict.render.processed_sha256) == 3

    relaxed, _ = data.build(filters={"max_bones": 100})
    assert set(relaxed.render.processed_sha256) == by_filter  # not the probe failure, not the accepted ones
    assert data.store().read("probes", columns=["probe_key"]).num_rows == probes  # decided again without probing
    assert {r["sha256"] for r in sample_rows(data.store())} >= by_filter


def test_a_bad_parameter_fails_the_run_before_any_work(tmp_path):
    lance = tmp_path / "never.lance"
    state = build_kinematicparts20k(
        source={"kind": "local"}, limit=0, lance_uri=str(lance), render={"resolutoin": 32}, return_state=True
    )
    assert state.is_failed()
    for problem in ("source.kind 'local' needs source.folder", "limit: Input should be greater than", "render: unknown keys ['resolutoin']"):
        assert problem in state.message
    with pytest.raises(Exception, match="invalid build parameters"):
        state.result()
    assert not lance.exists()


def busy_blender(entry: Path, own_session: int) -> bool:
    """A Blender child (flows.blender_process) of this test's session whose actor is inside a task."""
    if os.getsid(int(entry.name)) != own_session or b"flows.blender_process" not in (entry / "cmdline").read_bytes():
        return False
    parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
    return b"ray::_RenderActor.process" in Path(f"/proc/{parent}/cmdline").read_bytes()


def fault_two_workers(stop: threading.Event, faulted: list[tuple[str, int]]) -> None:
    """Freeze the first Blender seen mid-asset (a hang), kill the next one (a crash).

    A process is judged only while stopped (SIGSTOP), so it cannot finish its asset between the
    check and the signal; one found idle is let go (SIGCONT)."""
    own_session = os.getsid(0)
    while not stop.is_set() and len(faulted) < 2:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or len(faulted) == 2 or int(entry.name) in [p for _, p in faulted]:
                continue
            pid = int(entry.name)
            try:
                if not busy_blender(entry, own_session):
                    continue
                os.kill(pid, signal.SIGSTOP)
                if not busy_blender(entry, own_session):
                    os.kill(pid, signal.SIGCONT)
                    continue
            except (ProcessLookupError, FileNotFoundError, PermissionError, IndexError):
                continue
            if faulted:
                os.kill(pid, signal.SIGKILL)
                faulted.append(("crashed", pid))
            else:
                faulted.append(("timeout", pid))  # stays stopped until its actor's deadline kills it
        time.sleep(0.02)


def test_a_hung_and_a_crashed_worker_cost_one_asset_each_and_a_refresh_retries_them(tmp_path):
    data = Dataset(tmp_path)
    assets = generate_assets(5, data.assets, seed=40)
    stop, faulted = threading.Event(), []
    watcher = threading.Thread(target=fault_two_workers, args=(stop, faulted), daemon=True)
    watcher.start()
    try:
        report, _ = data.build(asset_timeout_s=10)
    finally:
        stop.set()
        watcher.join()
    assert [kind for kind, _ in faulted] == ["timeout", "crashed"]
    # Each outcome came back only after its actor reaped the process: nothing is left to wait for.
    assert not any(process_alive(pid) for _, pid in faulted)
    assert (report.render.timeouts, report.render.crashes) == (1, 1)
    rejections = data.store().read("rejections", columns=["sha256", "stage", "reason", "detail"]).to_pylist()
    assert sorted((r["stage"], r["reason"]) for r in rejections) == [("pool", "crashed"), ("pool", "timeout")]
    details = {r["reason"]: r["detail"] for r in rejections}
    hung, killed = (pid for _, pid in faulted)
    assert f"Blender worker pid {hung} killed" in details["timeout"]
    # The crash is explained: the signal, the OOM killer ruled in or out, peak memory, the log's end.
    assert f"Blender worker pid {killed} killed by SIGKILL" in details["crashed"]
    assert "peak memory" in details["crashed"] and "its log" in details["crashed"]
    failed = {r["sha256"] for r in rejections}
    rendered = {r["sha256"] for r in sample_rows(data.store())}
    assert rendered == {a.sha256 for a in assets} - failed  # everything else was written

    # Timeouts and crashes are transient: the next refresh renders those two assets and nothing else.
    retry, _ = data.build(asset_timeout_s=10)
    assert set(retry.render.processed_sha256) == failed
    assert {r["sha256"] for r in sample_rows(data.store())} == {a.sha256 for a in assets}
    assert (retry.render.timeouts, retry.render.crashes) == (0, 0)


def test_the_cli_prints_the_table_a_snippet_that_reads_it_and_the_contact_sheet(tmp_path, capsys):
    lance = tmp_path / "cli.lance"
    code = main([
        "build", "--count", "2", "--folder", str(tmp_path / "generated"), "--lance", str(lance),
        "--cache-dir", str(tmp_path / "cache"), "--views", "2", "--frames", "2", "--resolution", "32", "--samples", "2",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"Table: {lance}/samples.lance" in out
    snippet = [line.strip() for line in out.split("Read it:\n")[1].split("Contact sheet:")[0].strip().splitlines()]
    assert len(snippet) == 3
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec("\n".join(snippet), {})
    ids = DatasetStore(str(lance)).existing_sample_ids()
    assert ids and all(sample_id in printed.getvalue() for sample_id in ids)
    sheet = Path(out.split("Contact sheet: ")[1].split()[0])
    assert sheet == Path(str(lance)).with_name("cli.contact-sheet.png") and Image.open(sheet).format == "PNG"


def test_the_cli_refuses_bad_parameters_with_exit_status_2(capsys):
    assert main(["build", "--count", "0", "--resolution", "8"]) == 2
    err = capsys.readouterr().err
    assert "source.count: Input should be greater than or equal to 1" in err
    assert "render.resolution: Input should be greater than or equal to 16" in err


def test_ten_builds_leave_bounded_folders(tmp_path, monkeypatch):
    """Logs, fetch locks and Blender scratch folders stay bounded however many builds run: at most
    WORKER_LOGS_KEPT older worker logs plus this build's, one lock file per cache shard (256 at most),
    and no scratch folder of an earlier build's render actors (a folder its actor could not remove is
    removed when the next actor starts). Only this test's own actors are looked at: other runs on a busy
    machine share the temporary folder. (A killed driver's Ray folder: tests/flows/test_processes.py.)"""
    import flows.build
    from flows.blender_process import SCRATCH_ROOT

    monkeypatch.setattr(flows.build, "WORKER_LOGS_KEPT", 3)
    data = Dataset(tmp_path)
    actors: list[list[int]] = []
    for n in range(1, 11):  # each refresh adds one asset: ten builds, ten pools, ten new Blender logs
        generate_assets(n, data.assets, seed=500)
        report, _ = data.build(pool_size=1)
        assert report.render.accepted_assets == 1
        actors.append(report.render.actor_pids)
    logs = list((Path(data.cache) / "logs").glob("blender-*.log"))
    assert 3 < len(logs) <= 3 + 1  # pruned before each pool starts; the last build's own log is added after
    cache = Path(data.cache)
    locks = [p for p in cache.rglob("*lock*") if p.is_file()]
    assert locks and all(p.name == ".lock" for p in locks)
    assert len(locks) == len({p.parent for p in locks}) <= 256
    assert list((cache / "candidates").iterdir()) == []  # each build removed its candidates file
    earlier = {str(pid) for pids in actors[:-1] for pid in pids}
    assert len(earlier) >= 9  # a pool of its own per build
    scratch = list(SCRATCH_ROOT.iterdir()) if SCRATCH_ROOT.is_dir() else []
    assert [p for p in scratch if p.name.split(".", 1)[0] in earlier] == []
