"""The production path: infra/local-stack.sh (server, `process` pool, the deployments of
infra/prefect.yaml, a worker) and `prefect deployment run build-kinematicparts20k/local`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from pipelines.build.sources.procedural import generate_assets
from pipelines.build.store import DatasetStore
from tests.flows.conftest import TINY_RENDER

pytestmark = pytest.mark.slow

PREFECT = str(Path(sys.executable).parent / "prefect")


def test_a_deployment_run_through_the_worker_writes_the_rows(prefect_stack, tmp_path):
    assets = generate_assets(2, tmp_path / "assets", seed=120)
    lance = tmp_path / "kp20k.lance"
    params = {
        "source": {"kind": "local", "folder": str(tmp_path / "assets")},
        "render": TINY_RENDER,
        "lance_uri": str(lance),
        "cache_dir": str(tmp_path / "cache"),
    }
    env = {**os.environ, "PREFECT_API_URL": prefect_stack["PREFECT_API_URL"]}
    run = subprocess.run(
        [PREFECT, "deployment", "run", "build-kinematicparts20k/local", "--params", json.dumps(params),
         "--watch", "--watch-timeout", "400"],
        env=env, capture_output=True, text=True, timeout=450,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + Path(prefect_stack["PREFECT_STACK_LOG"]).read_text()[-2000:]
    assert "Completed" in run.stdout

    rows = DatasetStore(str(lance)).read_samples(columns=["sample_id", "sha256"]).to_pylist()
    assert {r["sha256"] for r in rows} == {a.sha256 for a in assets}
    assert len({r["sample_id"] for r in rows}) == len(rows)

    with temporary_settings(updates={PREFECT_API_URL: prefect_stack["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("build-kinematicparts20k/local")
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    (flow_run,) = [r for r in runs if r.parameters.get("lance_uri") == str(lance)]
    assert flow_run.state.is_completed()
    assert flow_run.parameters["render"] == TINY_RENDER  # the run's parameters override the deployment's
