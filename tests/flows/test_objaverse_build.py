"""Objaverse-XL as a real source, end to end: one build flow run over annotations in the released
layout, every source served on loopback (HTTP for Sketchfab, Smithsonian and Thingiverse, a
``file://`` git repository for GitHub), over a mixed batch of good and bad assets.

The batch: four good rigs (one per source); a truncated .glb (import_error, decided by a worker);
an HTTP asset that never answers (download_failed after the read timeout), whose URL carries a
token; an HTTP asset with other bytes than its annotation's sha256 (hash_mismatch); a licence no
one can read (unknown_licence); and a GitHub repository that no longer exists (download_failed).
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass
from typing import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker

from flows.build import build_kinematicparts20k
from flows.report import BuildReport
from pipelines.build.sources.objaverse_xl import sketchfab_object_paths_file
from pipelines.build.sources.procedural import generate_rig_bytes
from pipelines.build.store import DatasetStore
from schemas.fetch import FetchSettings
from tests import factories
from tests.flows.conftest import TINY_RENDER
from tests.netfixtures import (
    LoopbackServer,
    Reply,
    annotation_row,
    github_identifier,
    make_git_repo,
    sha256_of,
    write_objaverse_annotations,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session", "prefect_api")]

TOKEN = "ghp_s3cr3tT0kenNeverPrinted42"
UID_GOOD, UID_WRONG = "0c3b0f5a6b1e4a5c9d1f2e3a4b5c6d7e", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"
SMITHSONIAN = "https://3d-api.si.edu/content/document/3d_package:{}/resources/{}"
THINGIVERSE = "https://www.thingiverse.com/thing:{}/files?fileId={}"
SETTINGS = FetchSettings(connect_timeout=1, read_timeout=1, attempt_seconds=10, retries=1, backoff_seconds=0.01, git_timeout=20)


@dataclass(frozen=True)
class Asset:
    identifier: str
    source: str
    licence: str | None
    content: bytes  # what the annotation's sha256 is taken over
    served_at: str | None = None  # loopback HTTP path, if served over HTTP
    expected_spdx: str | None = None  # good assets: the licence their samples carry
    expected: tuple[str, str] | None = None  # bad assets: (stage, reason) of their one rejection

    @property
    def sha256(self) -> str:
        return sha256_of(self.content)


def mixed_batch(commit: str, truncated: bytes) -> list[Asset]:
    rig = generate_rig_bytes
    slow_url = SMITHSONIAN.format("5e1a0c77", "slow-150k.glb") + f"?access_token={TOKEN}"
    return [
        Asset(github_identifier("octo", "rigs", commit, "animals/arm.glb"), "github", "MIT License", rig("arm", 1),
              expected_spdx="MIT"),
        Asset(f"https://sketchfab.com/3d-models/{UID_GOOD}", "sketchfab", "by", rig("snake", 2),
              f"/hf/glbs/000-001/{UID_GOOD}.glb", expected_spdx="CC-BY-4.0"),
        Asset(SMITHSONIAN.format("d8c62be9", "mammoth-150k.glb"), "smithsonian", "CC0", rig("arm", 3),
              "/content/document/3d_package:d8c62be9/resources/mammoth-150k.glb", expected_spdx="CC0-1.0"),
        Asset(THINGIVERSE.format(1234, 5678), "thingiverse", "Creative Commons - Attribution", rig("snake", 4),
              "/thingiverse/download:5678", expected_spdx="CC-BY-4.0"),
        Asset(THINGIVERSE.format(1234, 5679), "thingiverse", "Creative Commons - Attribution", truncated,
              "/thingiverse/download:5679", expected=("probe", "import_error")),
        Asset(slow_url, "smithsonian", "CC0", rig("arm", 7), "/content/document/3d_package:5e1a0c77/resources/slow-150k.glb",
              expected=("fetch", "download_failed")),
        Asset(f"https://sketchfab.com/3d-models/{UID_WRONG}", "sketchfab", "cc0", rig("arm", 5),
              f"/hf/glbs/000-002/{UID_WRONG}.glb", expected=("fetch", "hash_mismatch")),
        Asset(THINGIVERSE.format(4321, 8765), "thingiverse", "Creative Commons - Attribution - Tuesdays Only", rig("arm", 8),
              "/thingiverse/download:8765", expected=("prefilter", "unknown_licence")),
        Asset(github_identifier("ghost", "deleted-repo", commit, "arm.glb"), "github", "MIT License", rig("arm", 9),
              expected=("fetch", "download_failed")),
    ]


@dataclass
class Run:
    batch: list[Asset]
    report: BuildReport
    flow_run_id: object
    store: DatasetStore
    server: LoopbackServer
    local_logs: list[str]

    def asset(self, served_at_suffix: str) -> Asset:
        (found,) = [a for a in self.batch if a.served_at and a.served_at.endswith(served_at_suffix)]
        return found


class _Collect(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.DEBUG)
        self.lines = lines
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def serve(server: LoopbackServer, batch: list[Asset]) -> None:
    for asset in batch:
        if asset.served_at is None:
            continue
        if asset.expected == ("fetch", "hash_mismatch"):
            server.add(asset.served_at, Reply(generate_rig_bytes("arm", 6)))  # a valid rig, but not these bytes
        elif asset.expected == ("fetch", "download_failed"):
            server.add(asset.served_at, Reply(asset.content, delay=120))  # headers never come: the read timeout
        else:
            server.add(asset.served_at, Reply(asset.content))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("objaverse-build")
    git_root = root / "git-remote"
    batch_commit = make_git_repo(git_root, "octo", "rigs", [{"animals/arm.glb": generate_rig_bytes("arm", 1)}])[0]
    batch = mixed_batch(batch_commit, factories.truncated_glb(root / "broken").read_bytes())
    download_dir = root / "objaverse"
    write_objaverse_annotations(download_dir, [annotation_row(a.identifier, a.source, a.licence, "glb", a.content) for a in batch])
    index = sketchfab_object_paths_file(download_dir)  # where objaverse keeps it; the flow finds it there
    index.parent.mkdir(parents=True)
    index.write_bytes(gzip.compress(json.dumps({UID_GOOD: f"glbs/000-001/{UID_GOOD}.glb", UID_WRONG: f"glbs/000-002/{UID_WRONG}.glb"}).encode()))

    lines: list[str] = []
    handler = _Collect(lines)
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    prefect_level = loggers[1].level
    with pytest.MonkeyPatch.context() as patch, LoopbackServer() as server:
        for name in ("no_proxy", "NO_PROXY"):
            patch.setenv(name, "127.0.0.1,localhost")
        serve(server, batch)
        settings = SETTINGS.model_copy(update={
            "github_base": f"file://{git_root}", "sketchfab_base": server.url("/hf"),
            "thingiverse_base": server.url("/thingiverse"), "smithsonian_base": server.base,
        })
        for logger in loggers:
            logger.addHandler(handler)
        loggers[1].setLevel(logging.INFO)  # the suite runs at WARNING; no line, INFO included, may carry a token
        try:
            state = build_kinematicparts20k(
                source={"kind": "objaverse-xl", "objaverse_dir": str(download_dir), "offline": True},
                render=TINY_RENDER, fetch=settings, lance_uri=str(root / "kp20k.lance"), cache_dir=str(root / "cache"),
                pool_size=2, shard_size=2, return_state=True,
            )
        finally:
            loggers[1].setLevel(prefect_level)
            for logger in loggers:
                logger.removeHandler(handler)
        assert state.is_completed(), state.message
        yield Run(batch, state.result(), state.state_details.flow_run_id, DatasetStore(str(root / "kp20k.lance")), server, lines)


def good(run: Run) -> list[Asset]:
    return [a for a in run.batch if a.expected is None]


def bad(run: Run) -> list[Asset]:
    return [a for a in run.batch if a.expected is not None]


def test_every_good_asset_has_samples_carrying_its_provenance(run: Run):
    rows = run.store.read_samples(columns=["sample_id", "file_identifier", "source", "license", "sha256"]).to_pylist()
    assert len({r["sample_id"] for r in rows}) == len(rows) == run.report.render.samples_written
    provenance = {(r["file_identifier"], r["source"], r["license"], r["sha256"]) for r in rows}
    assert provenance == {(a.identifier, a.source, a.expected_spdx, a.sha256) for a in good(run)}
    assert run.report.discovered == len(run.batch) and run.report.fetched == len(good(run)) + 1  # + the truncated file


def test_every_bad_asset_has_exactly_its_reason_and_every_asset_seen_is_accounted_for(run: Run):
    rows = run.store.read("rejections", columns=["file_identifier", "sha256", "stage", "reason", "detail"]).to_pylist()
    found = sorted((r["file_identifier"], r["sha256"], r["stage"], r["reason"]) for r in rows)
    assert found == sorted((a.identifier, a.sha256, *a.expected) for a in bad(run))  # one row each, nothing else
    sampled = set(run.store.read_samples(columns=["file_identifier"]).column("file_identifier").to_pylist())
    assert sampled | {r["file_identifier"] for r in rows} == {a.identifier for a in run.batch}
    details = {r["file_identifier"]: r["detail"] for r in rows}
    assert "timed out" in details[run.asset("slow-150k.glb").identifier].lower()
    assert "does not appear to be a git repository" in details[next(a.identifier for a in bad(run) if "ghost" in a.identifier)]


def test_fetch_went_through_loopback_with_its_settings(run: Run):
    hits = run.server.hits
    for asset in good(run):
        assert asset.served_at is None or hits[asset.served_at] == 1  # each fetched once, by its worker
    # The worker's fetch tries the hanging asset 1 + retries times; the prefilter refused the
    # unreadable licence before any byte moved.
    assert hits[run.asset("slow-150k.glb").served_at] == SETTINGS.retries + 1
    assert hits[run.asset("download:8765").served_at] == 0


def read_back(run: Run) -> tuple[dict, list[str]]:
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.flow_run_id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.flow_run_id])))
    return {a.key: a for a in artifacts}, [log.message for log in logs]


def test_the_run_artifacts_list_every_reason_and_every_rejected_asset(run: Run):
    artifacts, _ = read_back(run)
    reasons = {row["stage/reason"]: row["count"] for row in json.loads(artifacts["kp20k-rejection-reasons"].data)}
    assert reasons == {"prefilter/unknown_licence": 1, "fetch/download_failed": 2, "fetch/hash_mismatch": 1, "probe/import_error": 1}
    listed = json.loads(artifacts["kp20k-rejected-assets"].data)
    assert sorted((r["source"], r["stage"], r["reason"]) for r in listed) == sorted((a.source, *a.expected) for a in bad(run))
    slow = next(r for r in listed if r["file_identifier"].startswith(SMITHSONIAN.format("5e1a0c77", "")))
    assert slow["file_identifier"].endswith("?access_token=***")  # shown, with its token masked


def test_no_token_in_rejection_details_artifacts_or_logs(run: Run):
    artifacts, api_logs = read_back(run)
    details = run.store.read("rejections", columns=["detail"]).column("detail").to_pylist()
    slow_detail = "\n".join(details)
    assert "access_token=***" in slow_detail  # the URL with the token did reach a detail, masked
    texts = {
        "rejection details": slow_detail,
        "artifacts": "\n".join(str(a.data) + str(a.description) for a in artifacts.values()),
        "Prefect run logs": "\n".join(api_logs),
        "local logs": "\n".join(run.local_logs),
    }
    assert [where for where, text in texts.items() if TOKEN in text] == []
