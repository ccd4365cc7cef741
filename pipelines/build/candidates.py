"""Discovery and prefilter at any table size: annotations in, a file of candidates out.

:func:`stage_candidates` streams a source's annotation batches through the prefilter, appends the
accepted rows to a parquet file and the rejections to the store (rows already stored for these rules
are not written again), and returns only counts, so nothing proportional to the table goes through
a Prefect result. :func:`stage_todo` keeps the rows a build still has to do, in another file, and
:func:`iter_candidates` reads them back as AssetRefs a batch at a time.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.build.prefilter import STAGE, Scan, candidate_assets, prefilter_stream
from pipelines.build.store import DatasetStore
from schemas.assets import AssetRef, Rejection
from schemas.prefilter import CANDIDATES_SCHEMA, CandidateSummary, PrefilterRules
from schemas.tables import from_table

FIRST_REJECTIONS = 200  # kept in the summary for the run's artifact


def stage_candidates(
    scan: Scan, rules: PrefilterRules, store: DatasetStore, path: Path, limit: int | None = None
) -> CandidateSummary:
    """Prefilter ``scan`` into ``path`` (written beside it and renamed in: whole or absent) and the
    store's ``rejections``; stops reading once ``limit`` candidates are accepted. The prefilter's
    temporary copy of the annotations goes in ``path``'s folder too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    summary = CandidateSummary(path=str(path))
    reasons: Counter[str] = Counter()

    def rejected(writer: pq.ParquetWriter) -> Iterator[pa.RecordBatch]:
        for decided in prefilter_stream(scan, rules, limit, spill_dir=str(path.parent)):  # beside the output, not in /tmp
            writer.write_batch(decided.accepted)
            summary.scanned += decided.scanned
            summary.accepted += decided.accepted.num_rows
            summary.rejected += decided.rejected.num_rows
            for count in pc.value_counts(decided.rejected.column("reason")).to_pylist():
                reasons[f"{STAGE}/{count['values']}"] += count["counts"]
            room = FIRST_REJECTIONS - len(summary.first_rejections)
            if room > 0:
                summary.first_rejections += from_table(Rejection, pa.Table.from_batches([decided.rejected.slice(0, room)]))
            yield decided.rejected

    try:
        with pq.ParquetWriter(partial, CANDIDATES_SCHEMA) as writer:
            summary.rejections_written = store.write_rejection_batches(rejected(writer), STAGE, rules.config_hash())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    summary.reasons = dict(reasons)
    return summary


def stage_todo(candidates: Path | str, skip: set[str], path: Path | str) -> dict[str, int]:
    """Write to ``path`` the candidates whose sha256 is not in ``skip`` (what a build finished
    already), batch by batch; returns how many there are per source."""
    done = pa.array(sorted(skip), pa.string())
    per_source: Counter[str] = Counter()
    with pq.ParquetWriter(path, CANDIDATES_SCHEMA) as writer:
        for batch in pq.ParquetFile(candidates).iter_batches():
            todo = batch.filter(pc.invert(pc.is_in(batch.column("sha256"), done)))
            writer.write_batch(todo)
            per_source.update({c["values"]: c["counts"] for c in pc.value_counts(todo.column("source")).to_pylist()})
    return dict(per_source)


def iter_candidates(path: Path | str, batch_rows: int = 256) -> Iterator[AssetRef]:
    """The AssetRefs of a candidates file, a batch at a time (a build's driver never holds them all)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield from candidate_assets(batch)
