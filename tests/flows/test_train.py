"""train-sp4d end to end: a dataset built by the real build flow, `kp20k train` in a subprocess killed
with SIGKILL once a checkpoint exists, started again, and then evaluated; and the flow's artifacts,
reruns and failures in this process, on the local stack's Prefect server.

The subprocesses run on Prefect's ephemeral API (the command's default); the kill takes the whole
process group, its temporary server included.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.cli import main
from flows.evaluate import evaluate_sp4d
from flows.train import train_sp4d
from pipelines.build.store import DatasetStore
from pipelines.evaluate.evaluation import ALL_METRICS, EvalComparison
from pipelines.train.checkpoints import latest_checkpoint, list_checkpoints
from pipelines.train.latents import open_latents
from pipelines.train.loop import METRICS, TrainReport, state_digest
from pipelines.version import code_version
from tests.flows.artifact_images import embedded_png
from tests.flows.conftest import REPO_ROOT, kill_session
from tests.training_helpers import (
    build_tiny_dataset,
    held_out_seed,
    synthetic_store,
    tiny_config,
    write_tiny_vae,
)

pytestmark = pytest.mark.usefixtures("prefect_api")

MAX_STEPS = 40
CHECKPOINT_EVERY = 5
VAL_FRACTION = 0.34


@pytest.fixture(scope="module")
def lance(tmp_path_factory, ray_session) -> str:
    return build_tiny_dataset(tmp_path_factory.getbasetemp() / "tiny-built")


def train_command(lance: str, output: Path, vae: Path, split_seed: int) -> list[str]:
    config = {"val_fraction": VAL_FRACTION, "split_seed": split_seed, "preview_inference_steps": 2, "warmup_steps": 5}
    return [
        sys.executable, "-m", "flows.cli", "train",
        "--lance", lance, "--output", str(output), "--run-name", "resumed",
        "--steps", str(MAX_STEPS), "--rgb-steps", "10", "--checkpoint-every", str(CHECKPOINT_EVERY),
        "--vae", str(vae), "--threads", "1", "--config", json.dumps(config), "--json",
    ]  # fmt: skip


def logged_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_sigkilled_training_resumes_from_its_checkpoint_then_evaluates(lance, tmp_path):
    vae = write_tiny_vae(tmp_path / "vae")
    command = train_command(lance, tmp_path / "runs", vae, held_out_seed(lance, VAL_FRACTION))
    run_dir = tmp_path / "runs" / "resumed"
    # Each run on its own ephemeral API: runs reported to the stack would also trigger evaluate-sp4d.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list_checkpoints(run_dir):
            assert first.poll() is None, f"training exited ({first.returncode}) before a checkpoint:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no checkpoint after 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        kill_session(first)
    at_kill = latest_checkpoint(run_dir)
    assert CHECKPOINT_EVERY <= at_kill.step < MAX_STEPS, "the kill came too late to test a resume"
    saved_optimizer = torch.load(at_kill.path / "optimizer.bin", weights_only=False)

    second = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    report = TrainReport.model_validate_json(second.stdout.strip().splitlines()[-1])

    # It continued from the checkpoint, not from zero: same step count and optimiser state.
    assert report.resumed_from == str(at_kill.path) and report.start_step == at_kill.step
    assert report.resumed_optimizer_digest == state_digest(saved_optimizer)
    assert report.final_step == MAX_STEPS and latest_checkpoint(run_dir).step == MAX_STEPS
    # Steps up to the checkpoint ran once; steps the killed run did after it ran again with the very
    # same losses (same data position, noise, optimiser and scheduler state).
    rows = logged_rows(run_dir)
    by_step: dict[int, list[dict]] = {}
    for row in rows:
        by_step.setdefault(row["step"], []).append(row)
    assert sorted(by_step) == list(range(1, MAX_STEPS + 1))
    assert all(len(by_step[s]) == 1 for s in range(1, at_kill.step + 1))
    assert all(len(repeats) in (1, 2) and repeats[0] == repeats[-1] for repeats in by_step.values())
    # Phase 2 began at step 11 in both runs.
    assert [by_step[s][0]["phase_both"] for s in (10, 11)] == [0.0, 1.0] and "part" in by_step[MAX_STEPS][0]

    record = latest_checkpoint(run_dir).record()
    samples_version = DatasetStore(lance).version()
    assert record.dataset.version == samples_version and record.dataset.lance_uri == lance
    assert record.code_version == code_version() and record.config.max_steps == MAX_STEPS
    assert record.dataset.vae_id.startswith("AutoencoderKL-") and record.dataset.latents_version is not None
    latents = open_latents(lance).to_table(columns=["latent_id", "vae_id"]).to_pylist()
    ours = [r["latent_id"] for r in latents if r["vae_id"] == record.dataset.vae_id]
    n_samples = DatasetStore(lance).read_samples(columns=["sample_id"]).num_rows
    assert len(ours) == len(set(ours)) == n_samples  # precomputed once, by the first run
    assert (run_dir / f"preview-step-{MAX_STEPS:08d}.png").is_file()
    assert list((run_dir / "logs").rglob("events.out.tfevents.*")), "TensorBoard logs"

    result = evaluate_sp4d(checkpoint=str(run_dir), config={"max_samples": 2, "inference_steps": 2})
    comparison = EvalComparison.model_validate_json(Path(result.json_path).read_text())
    assert set(comparison.report.metrics) == set(ALL_METRICS) and comparison.report.step == MAX_STEPS
    for name, value in comparison.report.metrics.items():
        assert (isinstance(value, float) and math.isfinite(value)) or value.startswith("not computed: "), (name, value)
    assert all(isinstance(comparison.report.metrics[m], float) for m in ("miou", "ari", "f1", "mean_accuracy", "psnr", "ssim"))


# ------------------------------------------------------------- the flow in this process (fast)


@pytest.fixture(scope="module")
def synthetic_lance(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("train-flow") / "kp20k.lance")
    synthetic_store(uri, 4)
    return uri


def run_artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in artifacts}


def test_the_flow_publishes_progress_losses_preview_and_summary_and_a_rerun_resumes(synthetic_lance, tmp_path):
    params = dict(lance_uri=synthetic_lance, output_dir=str(tmp_path), config=tiny_config(max_steps=3).model_dump(mode="json"))
    state = train_sp4d(**params, return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    run_dir = Path(report.run_dir)
    assert run_dir.parent == tmp_path and report.final_step == 3 and report.start_step == 0
    artifacts = run_artifacts(state.state_details.flow_run_id)
    assert set(artifacts) == {"kp20k-train-progress", "kp20k-train-losses", "kp20k-train-preview", "kp20k-train-summary"}
    assert artifacts["kp20k-train-progress"].data == 100.0
    losses = json.loads(artifacts["kp20k-train-losses"].data)
    assert [row["step"] for row in losses] == [1, 2, 3] and all(math.isfinite(row["loss"]) for row in losses)
    preview = embedded_png(artifacts["kp20k-train-preview"].data)
    assert preview == (run_dir / "preview-step-00000003.png").read_bytes()
    assert str((run_dir / "preview-step-00000003.png").resolve()) in artifacts["kp20k-train-preview"].description
    summary = artifacts["kp20k-train-summary"].data
    assert f"samples **v{report.dataset.version}**" in summary
    assert f"tensorboard --logdir {run_dir.resolve() / 'logs'}" in summary and f"`{Path(synthetic_lance).resolve()}`" in summary

    again = train_sp4d(**params)  # the same request again (a second trigger): nothing left to do
    assert (again.run_dir, again.start_step, again.final_step) == (report.run_dir, 3, 3)
    assert again.last_losses == report.last_losses  # the checkpoint's, as nothing was trained
    assert [c.step for c in list_checkpoints(run_dir)] == [2, 3]


def test_a_bad_config_fails_the_run_with_a_reason(synthetic_lance, tmp_path):
    state = train_sp4d(lance_uri=synthetic_lance, output_dir=str(tmp_path), config={"max_step": 3}, return_state=True)
    assert state.is_failed() and "bad_parameters" in state.message and "max_step" in state.message
    assert main(["train", "--lance", synthetic_lance, "--config", '{"batch_size": 0}']) == 2


def test_a_missing_table_fails_the_run_with_a_reason(tmp_path):
    state = train_sp4d(lance_uri=str(tmp_path / "absent.lance"), output_dir=str(tmp_path), return_state=True)
    assert state.is_failed() and "version_not_found" in state.message
