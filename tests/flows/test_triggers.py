"""The train-sp4d and evaluate-sp4d deployments and their triggers (infra/prefect.yaml): valid as
written, and, on the real local stack (server, worker, deployed automations), a completed build run
starts a training run whose completion starts an evaluation run."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun

from flows.build import FLOW_NAME as BUILD_FLOW
from flows.build import build_kinematicparts20k
from flows.evaluate import FLOW_NAME as EVALUATE_FLOW
from flows.train import COMPLETED_EVENT
from flows.train import FLOW_NAME as TRAIN_FLOW
from pipelines.evaluate.evaluation import ALL_METRICS, EvalComparison, EvalConfig
from pipelines.train.checkpoints import latest_checkpoint
from pipelines.train.config import TrainConfig
from tests.flows.conftest import REPO_ROOT, TINY_RENDER, VENV_BIN
from tests.training_helpers import build_tiny_dataset, held_out_seed

TRAIN_TRIGGER = "train-sp4d-on-build"


def deployments(flow_file: str) -> list[dict]:
    spec = yaml.safe_load((REPO_ROOT / "infra" / "prefect.yaml").read_text())
    return [d for d in spec["deployments"] if d["entrypoint"].startswith(flow_file)]


def test_training_deployments_load_their_flows_with_valid_parameters():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    PrefectYamlModel.model_validate(yaml.safe_load((REPO_ROOT / "infra" / "prefect.yaml").read_text()))
    (train,), (evaluate,) = deployments("flows/train.py"), deployments("flows/evaluate.py")
    for deployment, flow_name in ((train, TRAIN_FLOW), (evaluate, EVALUATE_FLOW)):
        flow = load_flow_from_entrypoint(str(REPO_ROOT / deployment["entrypoint"]))
        # Named after the flow: the Automations page shows an action as "Run deployment: <name>".
        assert (deployment["name"], flow.name, deployment["work_pool"]["name"]) == (flow_name, flow_name, "process")
        assert flow.fn.__name__ == deployment["entrypoint"].split(":")[1]
    TrainConfig.model_validate(train["parameters"]["config"])
    EvalConfig.model_validate(evaluate["parameters"]["config"])
    assert train["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_build_completion_triggers_training_when_switched_on_and_training_triggers_evaluation():
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    (train,), (evaluate,) = deployments("flows/train.py"), deployments("flows/evaluate.py")
    (on_build,) = _initialize_deployment_triggers("train-sp4d/train-sp4d", [dict(t) for t in train["triggers"]])
    assert on_build.name == TRAIN_TRIGGER and on_build.enabled is False  # switched on by hand: training is costly
    assert on_build.expect == {"prefect.flow-run.Completed"}
    assert on_build.match_related.model_dump() == {"prefect.resource.role": "flow", "prefect.resource.name": BUILD_FLOW}
    assert "flow_run.parameters.lance_uri" in on_build.parameters["lance_uri"]
    (after_training,) = _initialize_deployment_triggers("evaluate-sp4d/evaluate-sp4d", [dict(t) for t in evaluate["triggers"]])
    assert after_training.enabled is True and after_training.expect == {COMPLETED_EVENT}
    assert after_training.match.model_dump() == {"prefect.resource.id": "kp20k.train-run.*"}
    assert after_training.parameters == {"checkpoint": "{{ event.payload.checkpoint }}"}


def test_the_automations_page_says_which_flow_runs_on_which_event():
    """What the UI shows of an automation: its name, its description, "Trigger: A custom trigger" (Prefect
    3.8.8 describes only triggers that name a flow by id) and "Run deployment: <deployment name>"."""
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    (train,), (evaluate,) = deployments("flows/train.py"), deployments("flows/evaluate.py")
    cases = [(train, TRAIN_FLOW, BUILD_FLOW), (evaluate, EVALUATE_FLOW, COMPLETED_EVENT)]
    for deployment, runs, event in cases:
        (trigger,) = _initialize_deployment_triggers(f"{runs}/{deployment['name']}", [dict(t) for t in deployment["triggers"]])
        trigger.set_deployment_id(uuid4())
        automation = trigger.as_automation()  # what `prefect deploy` creates
        assert f"Run deployment: {deployment['name']}" == f"Run deployment: {runs}"
        assert automation.name.startswith(runs)
        assert automation.description.startswith("When a ") and event in automation.description
        assert f"run {runs}" in automation.description


# ------------------------------------------------------------------------- on the local stack


def wait_for_run(client, deployment_id: UUID, under: Path, timeout_s: float, log: Path) -> FlowRun:
    """The first finished run of the deployment whose parameters name a path under ``under`` (other
    tests' runs on the shared stack may trigger the same deployments)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
        finished = [r for r in runs if r.state and r.state.is_final() and str(under) in str(r.parameters)]
        if finished:
            return finished[0]
        time.sleep(1)
    raise TimeoutError(f"no finished run of deployment {deployment_id} after {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_a_completed_build_starts_training_and_then_evaluation(tmp_path_factory, tmp_path, ray_session, prefect_stack, prefect_api):
    lance = build_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny-built")
    env = {**os.environ, "PREFECT_API_URL": prefect_stack["PREFECT_API_URL"]}
    worker_log = Path(prefect_stack["PREFECT_STACK_LOG"]).with_name("worker.log")
    config = {
        "max_steps": 4, "rgb_steps": 2, "checkpoint_every": 2, "threads": 1, "preview_inference_steps": 2,
        "val_fraction": 0.34, "split_seed": held_out_seed(lance, 0.34),
    }  # fmt: skip
    with get_client(sync_client=True) as client:
        train = client.read_deployment_by_name(f"{TRAIN_FLOW}/{TRAIN_FLOW}")
        evaluate = client.read_deployment_by_name(f"{EVALUATE_FLOW}/{EVALUATE_FLOW}")
        saved = train.parameters, evaluate.parameters
        client.update_deployment(train.id, DeploymentUpdate(parameters={"output_dir": str(tmp_path / "runs"), "config": config}))
        client.update_deployment(evaluate.id, DeploymentUpdate(parameters={"config": {"max_samples": 1, "inference_steps": 2}}))
        prefect = str(VENV_BIN / "prefect")
        try:
            # The documented switch.
            subprocess.run([prefect, "automation", "enable", TRAIN_TRIGGER], env=env, check=True, capture_output=True, timeout=120)
            # A refresh of the built table: every asset is already decided, so it completes in seconds.
            state = build_kinematicparts20k(
                source={"kind": "procedural", "count": 3, "folder": str(Path(lance).parent / "assets")},
                render=TINY_RENDER,
                lance_uri=lance,
                cache_dir=str(Path(lance).parent / "cache"),
                return_state=True,
            )
            assert state.is_completed(), state.message
            trained = wait_for_run(client, train.id, tmp_path, 420, worker_log)
            assert trained.state.is_completed(), trained.state.message
            assert trained.parameters["lance_uri"] == lance  # from the build run's own parameters
            evaluated = wait_for_run(client, evaluate.id, tmp_path, 420, worker_log)
            assert evaluated.state.is_completed(), evaluated.state.message
        finally:
            subprocess.run([prefect, "automation", "disable", TRAIN_TRIGGER], env=env, capture_output=True, timeout=120)
            client.update_deployment(train.id, DeploymentUpdate(parameters=saved[0]))
            client.update_deployment(evaluate.id, DeploymentUpdate(parameters=saved[1]))
    (run_dir,) = (tmp_path / "runs").iterdir()
    final = latest_checkpoint(run_dir)
    assert final.step == 4 and evaluated.parameters["checkpoint"] == str(final.path)
    comparison = EvalComparison.model_validate_json((run_dir / "evaluations" / "step-00000004.json").read_text())
    assert set(comparison.report.metrics) == set(ALL_METRICS) and comparison.report.dataset.lance_uri == lance
