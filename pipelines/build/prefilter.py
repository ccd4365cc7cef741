"""Prefilter: decide on annotations alone which candidates are worth fetching, streamed as Arrow.

Rules run in a fixed order and the first that fails names the rejection: annotation sanity
(sha256 must be 64 hex digits: it becomes a cache path; a file identifier), source, a format Blender
cannot read (``.dae``: ``no_blender_importer``), file type, licence, then de-duplication.
De-duplication runs last, over the survivors, so the copy kept is one whose licence allows it; among
those, the first by (source, file identifier) wins, whatever the input order. Accepted assets carry
their licence as an SPDX id (the raw string moves to ``metadata["license_raw"]`` when it differs), and
the other copies of their bytes in ``metadata["duplicate_copies"]``: fetch falls back to them when the
kept copy is gone (a deleted GitHub fork must not lose an asset that lives on elsewhere).

Scale (Objaverse-XL has ~10M annotation rows): the rules are Arrow column predicates over record
batches, never a Python object per row; a licence string is judged once per distinct spelling in a
batch. De-duplication needs to know the whole table, so it makes three passes (``docs/sources.md``):
pass 1 reads the source once, copies its rows to a local Arrow file, and keeps the first 8 bytes of
every survivor's sha256 as a uint64 (8 bytes a survivor: 8 MB per million, twice that while sorting)
to find the prefixes seen twice; pass 2 (over the file) keeps only the rows with such a prefix (the
duplicate groups) and picks each group's kept copy exactly, on the full sha256; pass 3 (over the
file) decides and yields batch by batch, in annotation order, so ``limit`` stops it as soon as that
many are accepted.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.build.hexkeys import hex_prefix64, isin_sorted
from pipelines.build.licences import LicencePolicy
from pipelines.version import code_version
from schemas.assets import AssetRef, Rejection, RejectReason
from schemas.prefilter import ANNOTATION_SCHEMA, CANDIDATES_SCHEMA, NO_BLENDER_IMPORTER, PrefilterRules
from schemas.tables import REJECTIONS_SCHEMA, from_table

PROCEDURAL_LICENCE = "CC0-1.0"
COPIES_KEY = "duplicate_copies"  # other places the kept bytes can be fetched from, in preference order
STAGE = "prefilter"

# A pass over the annotations, as ANNOTATION_SCHEMA batches (called once per prefilter).
Scan = Callable[[], Iterator[pa.RecordBatch]]

_NULL = pa.scalar(None, pa.string())


@dataclass(frozen=True)
class PrefilterBatch:
    """The decisions on one batch of annotation rows."""

    accepted: pa.RecordBatch  # CANDIDATES_SCHEMA
    rejected: pa.RecordBatch  # REJECTIONS_SCHEMA, rule rejections first, then duplicates
    scanned: int  # annotation rows decided (fewer than the batch when ``limit`` cut it)


@dataclass(frozen=True)
class _Verdict:
    """The normalised columns of a batch and the first rule each row fails (null: none)."""

    fid: pa.Array
    source: pa.Array
    licence: pa.Array  # SPDX id
    licence_raw: pa.Array  # the annotation's string where it differs from the SPDX id
    file_type: pa.Array
    sha: pa.Array
    metadata: pa.Array
    local_path: pa.Array
    reason: pa.Array
    detail: pa.Array


@dataclass
class _Duplicates:
    """Which rows of the scan lose to another copy of their bytes, and what the kept copies list."""

    prefixes: np.ndarray  # sorted sha256 prefixes (uint64) seen on more than one survivor
    kept: dict[int, str | None]  # ordinal of a kept copy -> its other places (JSON) or None
    losers: dict[int, str]  # ordinal of a dropped copy -> detail naming the kept one


def prefilter_stream(
    scan: Scan, rules: PrefilterRules | None = None, limit: int | None = None, spill_dir: str | None = None
) -> Iterator[PrefilterBatch]:
    """Decide every annotation row of ``scan`` (or until ``limit`` are accepted), batch by batch.

    With de-duplication the source is read once: its rows go to an Arrow file in a temporary folder
    under ``spill_dir`` (the system's by default; the rows of the requested file types, ~15% of
    Objaverse-XL, uncompressed) that the later passes read, so every pass sees the same rows.
    """
    rules = rules or PrefilterRules()
    policy = LicencePolicy(allow=frozenset(rules.licences))
    stamp = {"config_hash": rules.config_hash(), "code_version": code_version()}
    if not rules.dedupe:
        yield from _decide(scan(), rules, policy, stamp, None, limit)
        return
    with tempfile.TemporaryDirectory(prefix="kp20k-prefilter-", dir=spill_dir) as folder:
        spill = Path(folder) / "annotations.arrow"

        def first() -> Iterator[pa.RecordBatch]:
            with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_stream(sink, ANNOTATION_SCHEMA) as writer:
                for batch in scan():
                    writer.write_batch(batch)
                    yield batch

        def again() -> Iterator[pa.RecordBatch]:
            with pa.OSFile(str(spill), "rb") as source:
                yield from pa.ipc.open_stream(source)

        duplicates = _find_duplicates(first(), again, rules, policy)
        yield from _decide(again(), rules, policy, stamp, duplicates, limit)


def _decide(
    batches: Iterator[pa.RecordBatch], rules: PrefilterRules, policy: LicencePolicy, stamp: dict[str, str],
    duplicates: _Duplicates | None, limit: int | None,
) -> Iterator[PrefilterBatch]:
    """Pass 3 (the only one without de-duplication): decide and yield, in annotation order."""
    accepted_total = ordinal = 0
    for batch in batches:
        if limit is not None and accepted_total >= limit:
            return
        verdict = _judge(batch, rules, policy)
        n = batch.num_rows
        rule_rejected = verdict.reason.is_valid().to_numpy(zero_copy_only=False)
        lost = np.zeros(n, dtype=bool)
        lost_detail: dict[int, str] = {}
        copies: dict[int, str] = {}
        if duplicates is not None and duplicates.prefixes.size:
            maybe = np.flatnonzero(~rule_rejected)
            hits = maybe[isin_sorted(hex_prefix64(verdict.sha.take(maybe)), duplicates.prefixes)]
            for i in hits.tolist():
                o = ordinal + i
                if o in duplicates.losers:
                    lost[i], lost_detail[i] = True, duplicates.losers[o]
                elif duplicates.kept.get(o):
                    copies[i] = duplicates.kept[o]
        ordinal += n
        accepted = ~rule_rejected & ~lost
        cut = n
        if limit is not None:
            positions = np.flatnonzero(accepted)
            if positions.size >= limit - accepted_total:
                cut = int(positions[limit - accepted_total - 1]) + 1
        accepted[cut:] = False
        accepted_total += int(accepted.sum())
        yield PrefilterBatch(
            accepted=_accepted_batch(verdict, np.flatnonzero(accepted), copies),
            rejected=_rejected_batch(verdict, np.flatnonzero(rule_rejected[:cut]), np.flatnonzero(lost[:cut]), lost_detail, stamp),
            scanned=cut,
        )


def prefilter(assets: list[AssetRef], rules: PrefilterRules | None = None) -> tuple[list[AssetRef], list[Rejection]]:
    """(accepted assets in input order, one rejection per refused asset): the stream over a list."""
    batch = assets_batch(assets)
    accepted: list[AssetRef] = []
    rejections: list[Rejection] = []
    for decided in prefilter_stream(lambda: iter([batch]), rules):
        accepted += candidate_assets(decided.accepted)
        rejections += from_table(Rejection, pa.Table.from_batches([decided.rejected]))
    return accepted, rejections


def assets_batch(assets: Iterable[AssetRef]) -> pa.RecordBatch:
    """AssetRefs (a local folder, procedural rigs) as one annotation batch."""
    rows = [
        {"fileIdentifier": a.file_identifier, "source": a.source, "license": a.license, "fileType": a.file_type,
         "sha256": a.sha256, "metadata": json.dumps(a.metadata), "local_path": a.local_path}
        for a in assets
    ]
    return pa.RecordBatch.from_pylist(rows, schema=ANNOTATION_SCHEMA)


def candidate_assets(rows: pa.RecordBatch | pa.Table) -> list[AssetRef]:
    """Accepted rows -> AssetRefs (built only for the work a build will do)."""
    assets = []
    for row in rows.to_pylist():
        # An annotation cannot smuggle fetch places in: only the prefilter's own list counts.
        metadata = {k: v for k, v in annotation_metadata(row["metadata"]).items() if k != COPIES_KEY}
        if row["license_raw"] is not None:
            metadata["license_raw"] = row["license_raw"]
        if row["duplicate_copies"]:
            metadata[COPIES_KEY] = json.loads(row["duplicate_copies"])
        assets.append(AssetRef(
            file_identifier=row["fileIdentifier"], source=row["source"], license=row["license"],
            file_type=row["fileType"], sha256=row["sha256"], metadata=metadata, local_path=row["local_path"],
        ))
    return assets


def annotation_metadata(value: Any) -> dict[str, Any]:
    """The metadata column is a JSON string in the released files; keep unreadable text as-is."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    text = str(value)
    if not text or text == "{}":
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"raw": text}
    return parsed if isinstance(parsed, dict) else {"raw": parsed}


# ------------------------------------------------------------------------------------- rules


def _join(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _licence_verdict(raw: str, policy: LicencePolicy) -> tuple[str | None, str | None, str | None]:
    """(SPDX id, reason code or None, detail) for one distinct licence string."""
    spdx, reason = policy.check(raw)
    if reason is RejectReason.unknown_licence:
        return None, reason.value, f"unreadable licence {raw!r}"[:300]
    if reason is RejectReason.licence_not_allowed:
        return spdx, reason.value, f"{spdx} is not in the allow-list"
    return spdx, None, None


def _judge(batch: pa.RecordBatch, rules: PrefilterRules, policy: LicencePolicy) -> _Verdict:
    n = batch.num_rows
    fid = pc.fill_null(batch.column("fileIdentifier"), "")
    source = pc.fill_null(batch.column("source"), "")
    raw = batch.column("license")
    file_type = pc.utf8_ltrim(pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(batch.column("fileType"), ""))), characters=".")
    sha = pc.utf8_lower(pc.utf8_trim_whitespace(pc.fill_null(batch.column("sha256"), "")))

    # Licences: judged once per distinct string (a few hundred spellings cover millions of rows).
    procedural_default = pc.and_(pc.equal(source, "procedural"), pc.is_null(raw))
    effective = pc.if_else(procedural_default, PROCEDURAL_LICENCE, raw)
    encoded = pc.dictionary_encode(effective)
    verdicts = [_licence_verdict(v, policy) for v in encoded.dictionary.to_pylist()]
    spdx, licence_reason, licence_detail = (
        pc.take(pa.array([v[k] for v in verdicts], pa.string()), encoded.indices) for k in range(3)
    )
    unreadable = pc.is_null(effective)
    licence_reason = pc.if_else(unreadable, RejectReason.unknown_licence.value, licence_reason)
    licence_detail = pc.if_else(unreadable, "unreadable licence None", licence_detail)
    if rules.allow_unlicensed_local:  # the user's own files
        own = pc.and_(pc.equal(source, "local"), pc.is_null(raw))
        licence_reason = pc.if_else(own, _NULL, licence_reason)
        spdx = pc.if_else(own, _NULL, spdx)
    differs = pc.fill_null(pc.not_equal(raw, spdx), True)
    licence_raw = pc.if_else(pc.and_(pc.is_valid(raw), differs), raw, _NULL)

    checks: list[tuple[Any, Any, Any]] = [
        (pc.invert(pc.match_substring_regex(sha, "^[0-9a-f]{64}$")), RejectReason.bad_annotation.value,
         _join("sha256 '", pc.utf8_slice_codeunits(sha, 0, 80), "' is not 64 hex digits")),
        (pc.equal(fid, ""), RejectReason.bad_annotation.value, "empty file identifier"),
    ]
    if rules.sources is not None:
        checks.append((pc.invert(pc.is_in(source, pa.array(rules.sources, pa.string()))), RejectReason.source_not_requested.value,
                       _join("source '", source, f"' not in {rules.sources}")))
    for kind, why in NO_BLENDER_IMPORTER.items():
        checks.append((pc.equal(file_type, kind), RejectReason.no_blender_importer.value, f"{kind}: {why}"))
    checks.append((pc.invert(pc.is_in(file_type, pa.array(rules.file_types, pa.string()))),
                   RejectReason.unsupported_file_type.value, _join("file type '", file_type, "' cannot carry a rig here")))
    checks.append((pc.is_valid(licence_reason), licence_reason, licence_detail))

    reason = detail = pa.nulls(n, pa.string())
    for failed, code, text in checks:
        first = pc.and_(pc.is_null(reason), failed)
        reason, detail = pc.if_else(first, code, reason), pc.if_else(first, text, detail)
    return _Verdict(fid, source, spdx, licence_raw, file_type, sha, batch.column("metadata"), batch.column("local_path"),
                    reason, detail)


# -------------------------------------------------------------------------------- duplicates


def _find_duplicates(
    first: Iterator[pa.RecordBatch], again: Callable[[], Iterator[pa.RecordBatch]], rules: PrefilterRules, policy: LicencePolicy
) -> _Duplicates:
    """Passes 1 (over ``first``) and 2 (over ``again()``): the kept copy of every sha256 that more
    than one survivor shares."""
    chunks = []
    for batch in first:
        verdict = _judge(batch, rules, policy)
        chunks.append(hex_prefix64(verdict.sha.filter(pc.is_null(verdict.reason))))
    seen = np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.uint64)
    del chunks
    prefixes = np.unique(seen[1:][seen[1:] == seen[:-1]])
    del seen
    duplicates = _Duplicates(prefixes=prefixes, kept={}, losers={})
    if not prefixes.size:
        return duplicates

    groups, ordinal = [], 0
    for batch in again():
        verdict = _judge(batch, rules, policy)
        survivors = np.flatnonzero(verdict.reason.is_null().to_numpy(zero_copy_only=False))
        hits = survivors[isin_sorted(hex_prefix64(verdict.sha.take(survivors)), prefixes)]
        groups.append(pa.table({
            "sha256": verdict.sha.take(hits), "source": verdict.source.take(hits),
            "fileIdentifier": verdict.fid.take(hits), "ordinal": pa.array(hits + ordinal, pa.int64()),
        }))
        ordinal += batch.num_rows
    order = [("sha256", "ascending"), ("source", "ascending"), ("fileIdentifier", "ascending"), ("ordinal", "ascending")]
    members = pa.concat_tables(groups).sort_by(order).to_pylist()
    for _, group in itertools.groupby(members, key=lambda row: row["sha256"]):
        kept, *others = list(group)
        places = dict.fromkeys((o["fileIdentifier"], o["source"]) for o in others)
        places.pop((kept["fileIdentifier"], kept["source"]), None)
        duplicates.kept[kept["ordinal"]] = (
            json.dumps([{"fileIdentifier": i, "source": s} for i, s in places]) if places else None
        )
        for other in others:
            duplicates.losers[other["ordinal"]] = f"same content as {kept['source']}:{kept['fileIdentifier']}"[:300]
    return duplicates


# ------------------------------------------------------------------------------------ output


def _accepted_batch(verdict: _Verdict, rows: np.ndarray, copies: dict[int, str]) -> pa.RecordBatch:
    copies_column = pa.array([copies.get(int(i)) for i in rows], pa.string()) if copies else pa.nulls(len(rows), pa.string())
    columns = [verdict.fid, verdict.source, verdict.licence, verdict.licence_raw, verdict.file_type, verdict.sha,
               verdict.metadata, None, verdict.local_path]
    arrays = [copies_column if c is None else c.take(rows) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, schema=CANDIDATES_SCHEMA)


def _repeat(value: Any, n: int) -> pa.Array:
    scalar = value if isinstance(value, pa.Scalar) else pa.scalar(value, pa.string())
    return pc.fill_null(pa.nulls(n, scalar.type), scalar)


def _rejected_batch(
    verdict: _Verdict, ruled: np.ndarray, lost: np.ndarray, lost_detail: dict[int, str], stamp: dict[str, str]
) -> pa.RecordBatch:
    rows = np.concatenate([ruled, lost])
    n = len(rows)
    reason = pa.concat_arrays([verdict.reason.take(ruled), _repeat(RejectReason.duplicate.value, len(lost))])
    detail = pa.concat_arrays([verdict.detail.take(ruled), pa.array([lost_detail[int(i)] for i in lost], pa.string())])
    now = pa.scalar(datetime.now(timezone.utc), REJECTIONS_SCHEMA.field("created_at").type)
    columns = {
        "sha256": verdict.sha.take(rows), "file_identifier": verdict.fid.take(rows), "source": verdict.source.take(rows),
        "stage": _repeat(STAGE, n), "reason": reason, "detail": detail, "clip": _repeat("", n),
        "config_hash": _repeat(stamp["config_hash"], n), "code_version": _repeat(stamp["code_version"], n),
        "created_at": _repeat(now, n), "rules_hash": pa.nulls(n, pa.string()),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in REJECTIONS_SCHEMA], schema=REJECTIONS_SCHEMA)
