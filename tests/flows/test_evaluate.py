"""evaluate-sp4d in this process on the local stack's Prefect server: a report with every metric, two
checkpoints side by side, the report as an artifact and as files, and clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.cli import main
from flows.evaluate import evaluate_sp4d
from pipelines.evaluate.evaluation import ALL_METRICS, EvalComparison
from pipelines.train.loop import train
from pipelines.train.runs import open_run, pin_dataset
from tests.training_helpers import synthetic_store, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    uri = str(tmp_path_factory.mktemp("evaluate-data") / "kp20k.lance")
    synthetic_store(uri, 4)
    config = tiny_config(max_steps=2, rgb_steps=1, checkpoint_every=1)
    folder = tmp_path_factory.mktemp("evaluate-run")
    train(folder, open_run(folder, pin_dataset(uri, None, None, config), config).dataset, config)
    return folder


def test_two_checkpoints_are_scored_side_by_side_into_json_markdown_and_an_artifact(run_dir, tmp_path):
    state = evaluate_sp4d(
        checkpoint=str(run_dir),
        baseline=str(run_dir / "checkpoints" / "step-00000001"),
        config={"max_samples": 1, "inference_steps": 2},
        report_dir=str(tmp_path),
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    comparison = EvalComparison.model_validate_json(Path(result.json_path).read_text())
    assert (comparison.report.step, comparison.baseline.step) == (2, 1)
    assert comparison.report.sample_ids == comparison.baseline.sample_ids
    assert set(comparison.report.metrics) == set(comparison.baseline.metrics) == set(ALL_METRICS)
    assert Path(result.json_path) == tmp_path / "step-00000002-vs-step-00000001.json"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert set(by_key) == {"kp20k-eval-report", "kp20k-eval-progress"} and by_key["kp20k-eval-progress"].data == 100.0
    table = by_key["kp20k-eval-report"].data
    assert "| metric | step 2 | step 1 |" in table and Path(result.markdown_path).read_text() in table
    report, baseline = comparison.report, comparison.baseline
    assert f"| model | miou | {report.metrics['miou']:.4f} (n=1) | {baseline.metrics['miou']:.4f} (n=1) |" in table
    assert "### Parts, step 2" in table and "### Parts, step 1" in table and "RGB clustering (training-free baseline)" in table


def test_the_command_prints_the_report_json_and_refuses_bad_arguments(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--samples", "1", "--steps", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["report"]["step"] == 2 and set(printed["report"]["metrics"]) == set(ALL_METRICS)
    assert (run_dir / "evaluations" / "step-00000002.json").is_file()
    assert main(["evaluate", str(run_dir), "--samples", "0"]) == 2
    assert "max_samples" in capsys.readouterr().err


def test_a_folder_without_checkpoints_fails_with_a_reason(tmp_path):
    state = evaluate_sp4d(checkpoint=str(tmp_path), return_state=True)
    assert state.is_failed() and "checkpoint_not_found" in state.message


def test_a_version_without_samples_fails_with_a_reason(run_dir):
    state = evaluate_sp4d(checkpoint=str(run_dir), config={"split": "val", "version": 1}, return_state=True)
    assert state.is_failed() and "no_samples" in state.message
