"""The flow ``train-sp4d``: pin the dataset -> precompute latents -> train (resumable) -> preview -> report.

Stages are plain functions of :mod:`pipelines.train.loop`, :mod:`pipelines.train.latents` and
:mod:`pipelines.evaluate.evaluation`; this module only wires them, publishes artifacts and emits the event
that starts evaluation.

Resumability is the run folder's, not Prefect's: a flow run killed at any point and started again
with the same parameters finds the same run folder (named after the pinned dataset version, or
``run_name``), loads its newest checkpoint and continues from that step. No stage is cached by
Prefect: the checkpoints and the ``latents`` table say what is done.

Artifacts: a progress bar (updated as steps are logged), a loss table, a preview grid of sampled RGB
and part frames, and a summary with the dataset version, checkpoints and the TensorBoard command.
When training completes the flow emits ``kp20k.train.completed`` with the checkpoint path in its
payload; the ``evaluate-sp4d`` deployment's trigger listens for it (infra/prefect.yaml).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import UUID

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from flows.artifacts import absolute_uri, image_markdown
from pipelines.evaluate.evaluation import preview
from pipelines.files import write_atomic
from pipelines.train.checkpoints import (
    Checkpoint,
    DatasetPin,
    RunError,
    latest_checkpoint,
    validate_config,
)
from pipelines.train.config import TrainConfig
from pipelines.train.latents import codec_id, load_codec, precompute_latents
from pipelines.train.launch import launch, launch_command
from pipelines.train.loop import TrainHooks, TrainReport, read_metrics, train
from pipelines.train.runs import RunRecord, locate_run, open_run

FLOW_NAME = "train-sp4d"
COMPLETED_EVENT = "kp20k.train.completed"
KEY_PREFIX = "kp20k-train"
LOSS_TABLE_ROWS = 50
LOSS_COLUMNS = ("loss", "rgb", "part", "contrastive", "lr")


def parse_config(config: dict[str, Any] | TrainConfig | None) -> TrainConfig:
    return validate_config(TrainConfig, config, "training config")


# ---------------------------------------------------------------------------------------- tasks


@task(name="pin-dataset", cache_policy=NO_CACHE)
def pin_run(
    output_dir: str, run_name: str | None, lance_uri: str, version: int | None, config_hash: str | None, config: TrainConfig
) -> tuple[Path, DatasetPin, RunRecord | None]:
    run_dir, pin, recorded = locate_run(output_dir, run_name, lance_uri, version, config_hash, config)
    state = f"resuming (recorded v{recorded.dataset.version})" if recorded else "new run"
    get_run_logger().info("%s: %s, samples v%d, config %s", run_dir, state, pin.version, pin.config_hash)
    return run_dir, pin, recorded


@task(name="precompute-latents", cache_policy=NO_CACHE)
def prepare_latents(pin: DatasetPin, config: TrainConfig) -> DatasetPin:
    """Name the codec in the pin and, with a VAE, encode the samples that have no latents yet."""
    logger = get_run_logger()
    codec = load_codec(config.vae_path)
    pin = pin.model_copy(update={"vae_id": codec_id(codec)})
    if not config.uses_latent_table:
        logger.info("latents: none to precompute (%s)", "pixel space" if config.vae_path is None else "precompute_latents is off")
        return pin
    report = precompute_latents(pin, codec, pin.vae_id)
    if report.encoded == 0:
        logger.info("latents: all %d samples already encoded with %s: skipped", report.already, pin.vae_id)
    else:
        logger.info("latents: encoded %d samples, %d already there (latents v%s)", report.encoded, report.already, report.latents_version)
    return pin.model_copy(update={"latents_version": report.latents_version})


@task(name="train", cache_policy=NO_CACHE)
def run_training(run_dir: Path, pin: DatasetPin, config: TrainConfig) -> TrainReport:
    """In this process on one GPU or the CPU; on several GPUs, `accelerate launch` of one process per
    GPU (pipelines.train.launch), whose output is this task's log."""
    logger = get_run_logger()
    progress = _StepProgress(config.max_steps)

    def on_checkpoint(checkpoint: Checkpoint) -> None:
        logger.info("checkpoint %s", checkpoint.path)

    gpus = torch.cuda.device_count()
    if gpus > 1:
        logger.info("%d GPUs: %s", gpus, " ".join(launch_command(run_dir, config.multi_gpu, gpus)))
        report = launch(run_dir, pin, config, gpus, on_line=logger.info)
    else:
        report = train(run_dir, pin, config, TrainHooks(on_log=progress.update, on_checkpoint=on_checkpoint))
    if report.resumed_from:
        logger.info("resumed from %s (step %d)", report.resumed_from, report.start_step)
    logger.info("trained steps %d..%d at %.2f steps/s", report.start_step, report.final_step, report.steps_per_s)
    return report


@task(name="preview", cache_policy=NO_CACHE)
def publish_preview(checkpoint: Checkpoint, inference_steps: int) -> Path:
    png = preview(checkpoint, inference_steps)
    path = checkpoint.run_dir / f"preview-step-{checkpoint.step:08d}.png"
    write_atomic(path, png)
    create_markdown_artifact(
        markdown=image_markdown(png, f"step {checkpoint.step}: true RGB | generated RGB | generated parts | true parts"),
        key=f"{KEY_PREFIX}-preview",
        description=f"Step {checkpoint.step}, one row per view: true RGB | generated RGB | generated parts | true parts. PNG: {path.resolve()}",
    )
    return path


@task(name="report", cache_policy=NO_CACHE)
def publish_report(report: TrainReport, checkpoint: Checkpoint) -> None:
    rows = read_metrics(Path(report.run_dir))
    stride = max(1, len(rows) // LOSS_TABLE_ROWS)
    table = [
        {"step": r["step"], **{c: round(r[c], 6) for c in LOSS_COLUMNS if c in r}}
        for i, r in enumerate(rows)
        if i % stride == 0 or i == len(rows) - 1
    ]
    create_table_artifact(table=table or [{"step": 0}], key=f"{KEY_PREFIX}-losses", description="Mean losses per logged step")
    create_markdown_artifact(markdown=summary_markdown(report, checkpoint), key=f"{KEY_PREFIX}-summary")


def summary_markdown(report: TrainReport, checkpoint: Checkpoint) -> str:
    pin = report.dataset
    resumed = f"resumed from `{Path(report.resumed_from).resolve()}` at step {report.start_step}" if report.resumed_from else "started from step 0"
    return (
        f"## train-sp4d: `{Path(report.run_dir).resolve()}`\n\n"
        f"- dataset: `{absolute_uri(pin.lance_uri)}` samples **v{pin.version}**, render config `{pin.config_hash}` "
        f"({pin.n_train} train / {pin.n_val} held-out samples); codec `{pin.vae_id}`"
        + (f", latents v{pin.latents_version}" if pin.latents_version is not None else "")
        + f"\n- {resumed}; now at step **{report.final_step}** ({report.steps_per_s:.2f} steps/s, "
        f"mixed precision `{report.mixed_precision}`)\n"
        f"- newest checkpoint: `{checkpoint.path.resolve()}` (record: `{checkpoint.record_path.name}`)\n"
        f"- code version `{report.code_version}`\n\n"
        f"Watch the curves: `tensorboard --logdir {Path(report.run_dir).resolve() / 'logs'}`\n"
    )


class _StepProgress:
    """The progress artifact, updated at most once a second as steps are logged."""

    def __init__(self, max_steps: int):
        self.max_steps = max_steps
        self.id: UUID | None = None
        self.last = 0.0

    def update(self, row: dict[str, float]) -> None:
        step = int(row["step"])
        description = f"step {step} of {self.max_steps}, loss {row['loss']:.4f}"
        percent = 100.0 * step / self.max_steps
        if self.id is None:
            self.id = create_progress_artifact(progress=percent, key=f"{KEY_PREFIX}-progress", description=description)
        elif step == self.max_steps or time.monotonic() - self.last >= 1.0:
            update_progress_artifact(artifact_id=self.id, progress=percent, description=description)
        else:
            return
        self.last = time.monotonic()


# ----------------------------------------------------------------------------------------- flow


@flow(name=FLOW_NAME, validate_parameters=False)
def train_sp4d(
    lance_uri: str = "data/kp20k.lance",
    version: int | None = None,
    config_hash: str | None = None,
    output_dir: str = "runs/sp4d",
    run_name: str | None = None,
    config: dict[str, Any] | None = None,
) -> TrainReport:
    """Train SP4D on one pinned version of the ``samples`` table (the latest when ``version`` is None).

    ``config`` holds :class:`pipelines.train.config.TrainConfig` fields (the defaults train the tiny
    model in pixel space). The run folder is ``output_dir/run_name``, by default
    ``output_dir/samples-v<version>-<config>``: the same request started again resumes it.
    """
    train_config = parse_config(config)
    run_dir, pin, recorded = pin_run(output_dir, run_name, lance_uri, version, config_hash, train_config)
    if recorded is None:
        pin = prepare_latents(pin, train_config)
    record = open_run(run_dir, pin, train_config)
    report = run_training(run_dir, record.dataset, train_config)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:  # max_steps is always checkpointed, so only a deleted folder gets here
        raise RunError("checkpoint_not_found", f"training finished but {run_dir} holds no checkpoint")
    publish_preview(checkpoint, train_config.preview_inference_steps)
    publish_report(report, checkpoint)
    emit_event(
        event=COMPLETED_EVENT,
        resource={"prefect.resource.id": f"kp20k.train-run.{run_dir.resolve()}", "prefect.resource.name": run_dir.name},
        payload={
            "run_dir": str(run_dir),
            "checkpoint": str(checkpoint.path),
            "step": checkpoint.step,
            "lance_uri": record.dataset.lance_uri,
            "version": record.dataset.version,
        },
    )
    return report
