"""The flow ``evaluate-sp4d``: score a checkpoint (and optionally a baseline) on held-out assets.

The scoring is :mod:`pipelines.evaluate.evaluation` (the model beside the RGB-clustering baseline, the
true-palette oracle and the ground-truth ceiling, every metric with its count and bootstrap interval);
this flow runs it per checkpoint, writes the report as JSON and markdown beside the run
(``<run_dir>/evaluations/``), and publishes the markdown as an artifact. With ``baseline`` the two
checkpoints are scored on the same items with the same noise, and the report adds their paired
differences and whether their intervals overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pipelines.evaluate.evaluation import (
    EvalComparison,
    EvalConfig,
    EvalReport,
    evaluate_checkpoint,
    report_markdown,
    write_report,
)
from pipelines.train.checkpoints import Checkpoint, resolve_checkpoint, validate_config

FLOW_NAME = "evaluate-sp4d"
KEY_PREFIX = "kp20k-eval"


class EvalResult(BaseModel):
    json_path: str
    markdown_path: str
    comparison: EvalComparison


def parse_config(config: dict[str, Any] | EvalConfig | None) -> EvalConfig:
    return validate_config(EvalConfig, config, "evaluation config")


@task(name="evaluate-checkpoint", cache_policy=NO_CACHE)
def score_checkpoint(checkpoint: Checkpoint, config: EvalConfig) -> EvalReport:
    logger = get_run_logger()
    progress: dict[str, UUID] = {}

    def on_sample(done: int, total: int) -> None:
        description = f"step {checkpoint.step}: {done} of {total} samples"
        if "id" not in progress:
            progress["id"] = create_progress_artifact(progress=100.0 * done / total, key=f"{KEY_PREFIX}-progress", description=description)
        else:
            update_progress_artifact(artifact_id=progress["id"], progress=100.0 * done / total, description=description)

    report = evaluate_checkpoint(checkpoint, config, on_sample)
    logger.info("step %d on %d %s samples: %s", checkpoint.step, len(report.sample_ids), report.split, report.metrics)
    return report


@flow(name=FLOW_NAME, validate_parameters=False)
def evaluate_sp4d(
    checkpoint: str,
    baseline: str | None = None,
    config: dict[str, Any] | None = None,
    report_dir: str | None = None,
) -> EvalResult:
    """Evaluate ``checkpoint`` (a checkpoint folder, or a run folder: its newest checkpoint).

    ``config`` holds :class:`pipelines.evaluate.evaluation.EvalConfig` fields: the split (held-out ``val`` by
    default), how many samples, sampler steps, seed, bootstrap draws, the FVD threshold, and the paths of
    the LPIPS, CLIP, I3D and SAM 2 weights (metrics without them are reported as "not computed").
    Reports go to ``report_dir``, by default ``<run_dir>/evaluations``.
    """
    eval_config = parse_config(config)
    target = resolve_checkpoint(checkpoint)
    report = score_checkpoint(target, eval_config)
    base = score_checkpoint(resolve_checkpoint(baseline), eval_config) if baseline else None
    folder = Path(report_dir) if report_dir else target.run_dir / "evaluations"
    json_path, md_path = write_report(report, base, folder)
    create_markdown_artifact(
        markdown=report_markdown(report, base) + f"\nJSON: `{json_path.resolve()}`\n", key=f"{KEY_PREFIX}-report"
    )
    return EvalResult(json_path=str(json_path), markdown_path=str(md_path), comparison=EvalComparison(report=report, baseline=base))
