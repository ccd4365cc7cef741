"""The flow ``lift-rigs``: lift every sample of a Lance table version, or every render folder under a
folder, to a rigged, animated .glb (``pipelines.lift``), and write them into the ``rigs`` table.

Rows are keyed by (source, sample, code version): a second run over the same input adds nothing.
Progress is a Prefect progress artifact; the summary (bones, unseen parts, the table written and how
to read it) is a markdown artifact.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from pipelines.build.store import open_table, sql_literal
from pipelines.lift.export import to_glb
from pipelines.lift.rig import lift
from pipelines.lift.table import existing_rig_ids, rig_key, rigs_uri, write_rigs
from pipelines.lift.views import LiftInputError, PartViews, from_folder, from_sample
from pipelines.version import code_version
from schemas.lift import RigRow, RigSummary
from schemas.samples import Sample
from schemas.tables import from_row

FLOW_NAME = "lift-rigs"
KEY_PREFIX = "kp20k-lift"
COMMIT_EVERY = 8  # rigs per commit of the rigs table
DEFAULT_RIGS = "data/kp20k.lance"


class LiftReport(BaseModel):
    rigs_uri: str
    version: int | None
    written: int
    already_done: int
    failed: dict[str, str]
    bones: dict[str, int]


def render_folders(folder: Path) -> list[Path]:
    """``folder`` itself when it is a render folder, else the render folders directly inside it."""
    if (folder / "sample.json").is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if (p / "sample.json").is_file())


@task(name="lift-sample", cache_policy=NO_CACHE)
def lift_one(views: PartViews, source: str, sample_id: str, version: str) -> RigRow:
    rig = lift(views)
    return RigRow(rig_id=rig_key(source, sample_id, version), sample_id=sample_id, source=source,
                  clip=views.clip, glb=to_glb(rig), summary=rig.summary(), code_version=version)


@flow(name=FLOW_NAME, validate_parameters=False)
def lift_rigs(samples: str, version: int | None = None, rigs: str | None = None, limit: int | None = None) -> LiftReport:
    """Lift ``samples``: a dataset folder (its ``samples.lance`` at ``version``, the latest when None),
    a ``kp20k render --out`` folder, or a folder of them. Writes ``<rigs>/rigs.lance`` (by default
    beside the samples table, or ``data/kp20k.lance`` for folders)."""
    logger = get_run_logger()
    path, code = Path(samples), code_version()
    if path.is_dir() and not (path / "samples.lance").exists():
        folders = render_folders(path)[:limit]
        if not folders:
            raise LiftInputError(f"{samples} holds no render folder (sample.json) and no samples.lance")
        items = [(str(f.resolve()), f.name, lambda f=f: from_folder(f)) for f in folders]
        root = rigs or DEFAULT_RIGS
    else:
        table = open_table(samples, "samples", version)
        version = table.version
        source = f"{Path(samples).resolve()}/samples.lance@{version}"
        ids = table.to_table(columns=["sample_id"]).column("sample_id").to_pylist()[:limit]
        items = [(source, i, lambda i=i, t=table: from_sample(_sample(t, i))) for i in ids]
        root = rigs or samples
    done = existing_rig_ids(root)
    todo = [item for item in items if rig_key(item[0], item[1], code) not in done]
    progress = create_progress_artifact(progress=0.0, key=f"{KEY_PREFIX}-progress", description=f"0 of {len(todo)} samples")
    pending: list[RigRow] = []  # committed every COMMIT_EVERY rigs: a killed run keeps what it finished
    lifted: list[tuple[str, str, RigSummary]] = []  # (sample, clip, summary): the .glb bytes are not kept
    written, failed = 0, {}
    for n, (source, sample_id, read) in enumerate(todo, start=1):
        try:
            row = lift_one(read(), source, sample_id, code)
            pending.append(row)
            lifted.append((row.sample_id, row.clip, row.summary))
        except LiftInputError as exc:  # one bad sample is reported, the others go on
            failed[sample_id] = str(exc)
            logger.warning("%s: %s", sample_id, exc)
        if len(pending) >= COMMIT_EVERY or n == len(todo):
            written += write_rigs(root, pending)
            pending.clear()
        update_progress_artifact(artifact_id=progress, progress=100.0 * n / max(len(todo), 1),
                                 description=f"{n} of {len(todo)} samples")
    report = LiftReport(rigs_uri=rigs_uri(root), version=version, written=written, already_done=len(items) - len(todo),
                        failed=failed, bones={sample: summary.n_bones for sample, _, summary in lifted})
    create_markdown_artifact(markdown=_markdown(report, lifted), key=f"{KEY_PREFIX}-summary")
    logger.info("%d rigs written to %s, %d already there, %d failed", written, report.rigs_uri, report.already_done, len(failed))
    return report


def _sample(table, sample_id: str) -> Sample:
    rows = table.to_table(filter=f"sample_id = {sql_literal(sample_id)}", blob_handling="all_binary").to_pylist()
    return from_row(Sample, rows[0])


def _markdown(report: LiftReport, lifted: list[tuple[str, str, RigSummary]]) -> str:
    lines = [f"# lift-rigs: {report.written} rigs written", "", f"Table: `{report.rigs_uri}`", "",
             "| sample | clip | bones | parts | unseen parts | merged |", "| --- | --- | --- | --- | --- | --- |"]
    for sample_id, clip, s in lifted:
        lines.append(f"| {sample_id[:16]} | {clip} | {s.n_bones} | {s.n_parts} | {', '.join(s.unseen_parts) or '-'} "
                     f"| {'; '.join('+'.join(g) for g in s.merged_parts) or '-'} |")
    for sample_id, reason in report.failed.items():
        lines.append(f"\nFailed: `{sample_id}`: {reason}")
    lines += ["", "Read it:", "```python", "import lance",
              f"rigs = lance.dataset({report.rigs_uri!r})",
              "print(rigs.to_table(columns=['sample_id', 'clip', 'summary']).to_pandas())", "```"]
    return "\n".join(lines)
