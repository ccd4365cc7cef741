"""The cluster path: a separate Ray head on loopback (its own processes and temp dir), the build pointed
at it by address, and the renders shown to have run in that cluster's worker processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipelines.build.sources.procedural import generate_assets
from pipelines.build.store import DatasetStore
from tests.flows.conftest import (
    cli_build,
    free_port,
    kill_session,
    report_from_log,
    wait_for_line,
)

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def ray_head(tmp_path):
    """``ray start --head --block`` on 127.0.0.1; yields (address, temp dir); stopped by process
    group (never ``ray stop``, which would stop every Ray on the machine)."""
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="kp20k-head-", dir="/tmp"))  # short: Ray's socket paths must fit
    log = tmp_path / "head.log"
    with open(log, "wb") as out:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", "2", "--include-dashboard=false", "--temp-dir", str(temp), "--disable-usage-stats"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_line(log, "Ray runtime started", head, timeout_s=120)
        yield f"127.0.0.1:{port}", temp
    finally:
        kill_session(head, grace_s=2.0)  # a throwaway head: no need to wait for a clean stop
        shutil.rmtree(temp, ignore_errors=True)


def test_the_build_renders_on_the_cluster_at_the_given_address(ray_head, prefect_stack, tmp_path):
    address, head_temp = ray_head
    folder = tmp_path / "assets"
    assets = generate_assets(2, folder, seed=90)
    lance = str(tmp_path / "kp20k.lance")
    log = tmp_path / "build.log"
    run = cli_build(
        ["--source", "local", "--folder", str(folder), "--lance", lance, "--cache-dir", str(tmp_path / "cache"),
         "--ray-address", address, "--workers", "2"],
        prefect_stack, log,
    )
    try:
        assert run.wait(300) == 0, log.read_text()[-3000:]
    finally:
        kill_session(run)
    report = report_from_log(log)
    # Ray reports its head by the host's address, whatever loopback name it was reached by.
    assert report.render.gcs_address.rsplit(":", 1)[1] == address.rsplit(":", 1)[1]
    assert len(report.render.node_ids) == 1
    assert sorted(report.render.processed_sha256) == sorted(a.sha256 for a in assets)
    # Each render actor was a process of that head: its logs are in the head's temp dir.
    logs = [p.name for p in (head_temp / "session_latest" / "logs").iterdir()]
    assert report.render.actor_pids
    for pid in report.render.actor_pids:
        assert any(name.startswith("worker-") and name.endswith(f"-{pid}.out") for name in logs), (pid, logs)
    rows = DatasetStore(lance).read_samples(columns=["sha256"]).column("sha256").to_pylist()
    assert set(rows) == {a.sha256 for a in assets}
