"""The flow ``fit-4d``: dynamic 3D assets with their kinematic parts, fitted to samples' views and frames.

Samples come from render folders (what ``kp20k render --out`` writes, or generated samples written the
same way) or from a pinned version of the Lance ``samples`` table. The fit is
:mod:`pipelines.fit4d` (stage 1 of SV4D 2.0's recipe); each sample is one task, so one that cannot be
read or fitted is reported with its reason and the others go on. With one sample, ``out`` is the
asset folder itself; with several, ``out`` holds one asset folder per sample (named after the folder
or the sample id). Progress goes to a progress artifact; the summary and the first sample's contact
sheet to markdown artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows.artifacts import image_markdown
from pipelines.build.store import DatasetStore, StoreError, sql_literal
from pipelines.fit4d.asset import AssetFolderError, out_problem, write_asset
from pipelines.fit4d.fit import fit
from pipelines.fit4d.gaussians import HullError
from pipelines.fit4d.target import FitTarget, TargetError, from_sample, load_folder
from schemas.fit4d import FitConfig
from schemas.samples import Sample
from schemas.tables import from_table

FLOW_NAME = "fit-4d"
KEY_PREFIX = "kp20k-fit4d"


class FitOutcome(BaseModel):
    sample: str
    out: str
    ok: bool
    error: str = ""
    fit_seconds: float = 0.0
    n_gaussians: int = 0
    losses: dict[str, float] = {}


class Fit4DReport(BaseModel):
    out: str
    outcomes: list[FitOutcome]

    @property
    def failed(self) -> list[FitOutcome]:
        return [o for o in self.outcomes if not o.ok]


class _Progress:
    """One progress artifact over all samples, advanced as each sample's steps go by."""

    def __init__(self, total: int):
        self.total = total
        self.id: UUID = create_progress_artifact(progress=0.0, key=f"{KEY_PREFIX}-progress",
                                                 description=f"0 of {total} samples fitted")

    def update(self, done: int, step: int, steps: int, name: str) -> None:
        share = 100.0 * (done + step / steps) / self.total
        update_progress_artifact(artifact_id=self.id, progress=share,
                                 description=f"{done} of {self.total} samples fitted; {name}: step {step} of {steps}")


def parse_config(config: dict[str, Any] | FitConfig | None) -> FitConfig:
    return config if isinstance(config, FitConfig) else FitConfig.model_validate(config or {})


def table_samples(lance_uri: str, version: int | None, sample_ids: list[str] | None, limit: int | None) -> tuple[int, list[str]]:
    """(the pinned version, the sample ids to fit): the ones named, else the first ``limit`` by id."""
    store = DatasetStore(lance_uri)
    pinned = store.version() if version is None else version
    found = sorted(store.existing_sample_ids(version=pinned))
    if sample_ids:
        missing = sorted(set(sample_ids) - set(found))
        if missing:
            raise StoreError("sample_not_found", f"no samples {missing[:5]} in {lance_uri} at version {pinned}")
        return pinned, list(sample_ids)
    return pinned, found[:limit] if limit is not None else found


def table_target(lance_uri: str, version: int, sample_id: str) -> FitTarget:
    """One row of the table, read when its task runs (a long list never sits in memory at once)."""
    rows = DatasetStore(lance_uri).read_samples(version, filter=f"sample_id = {sql_literal(sample_id)}")
    (sample,) = from_table(Sample, rows)
    return from_sample(sample, f"{lance_uri}@v{version}/{sample_id}")


@task(name="fit-sample", cache_policy=NO_CACHE)
def fit_sample(load: Any, name: str, out: str, config: FitConfig, progress: _Progress, done: int) -> FitOutcome:
    logger = get_run_logger()
    try:
        target = load()
        problem = out_problem(Path(out).absolute())
        if problem:
            raise AssetFolderError(problem)

        def on_step(step: int, steps: int, losses: dict[str, float]) -> None:
            progress.update(done, step, steps, name)
            logger.info("%s: step %d of %d, losses %s", name, step, steps, {k: round(v, 4) for k, v in losses.items()})

        result = fit(target, config, on_step)
        record = write_asset(out, result, target, config)
    except (TargetError, HullError, AssetFolderError, StoreError, OSError) as exc:
        logger.error("%s: not fitted: %s", name, exc)
        return FitOutcome(sample=name, out=out, ok=False, error=str(exc))
    logger.info("%s: fitted in %.1f s, written to %s", name, record.fit_seconds, out)
    return FitOutcome(sample=name, out=out, ok=True, fit_seconds=record.fit_seconds, n_gaussians=record.n_gaussians,
                      losses=record.final_losses)


@flow(name=FLOW_NAME, validate_parameters=False)
def fit_4d(
    samples: list[str] | None = None,
    lance_uri: str | None = None,
    version: int | None = None,
    sample_ids: list[str] | None = None,
    limit: int | None = None,
    out: str = "runs/fit4d",
    config: dict[str, Any] | None = None,
) -> Fit4DReport:
    """Fit ``samples`` (render folders) or samples of ``lance_uri`` at ``version`` (``sample_ids``, or the
    first ``limit`` by id) and write one asset per sample under ``out``. ``config`` holds
    :class:`schemas.fit4d.FitConfig` fields (steps, primitives, trained views and frames, device...)."""
    fit_config = parse_config(config)
    jobs: list[tuple[str, Any]] = [(Path(s).name, lambda s=s: load_folder(s)) for s in samples or []]
    if lance_uri:
        pinned, ids = table_samples(lance_uri, version, sample_ids, limit)
        jobs += [(i, lambda i=i: table_target(lance_uri, pinned, i)) for i in ids]
    if not jobs:
        raise ValueError("nothing to fit: give sample folders, or a Lance table (lance_uri)")
    progress = _Progress(len(jobs))
    single = len(jobs) == 1
    outcomes = []
    for done, (name, load) in enumerate(jobs):
        target_out = out if single else str(Path(out) / name)
        outcomes.append(fit_sample(load, name, target_out, fit_config, progress, done))
    report = Fit4DReport(out=out, outcomes=outcomes)
    create_markdown_artifact(markdown=summary_markdown(report), key=f"{KEY_PREFIX}-summary")
    first = next((o for o in outcomes if o.ok), None)
    if first is not None:
        png = (Path(first.out) / "contact_sheet.png").read_bytes()
        create_markdown_artifact(markdown=image_markdown(png, f"{first.sample}: fitted and true RGB and parts per view"),
                                 key=f"{KEY_PREFIX}-contact-sheet",
                                 description=f"{first.sample}: fitted above true, held-out views and frames marked *")
    return report


def summary_markdown(report: Fit4DReport) -> str:
    lines = ["| sample | result | fit time | primitives | RGB L1 | alpha L1 | folder |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for o in report.outcomes:
        if o.ok:
            lines.append(f"| {o.sample} | fitted | {o.fit_seconds:.1f} s | {o.n_gaussians} | {o.losses['rgb']:.4f} | "
                         f"{o.losses['alpha']:.4f} | `{Path(o.out).resolve()}` |")
        else:
            lines.append(f"| {o.sample} | **not fitted**: {o.error} | | | | | |")
    return "\n".join(lines) + "\n"

