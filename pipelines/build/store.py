"""The Lance tables of a build: ``samples``, ``assets``, ``rejections``, ``parts`` and ``probes``, written idempotently.

A store is a folder (local path or ``s3://`` URI) holding ``samples.lance``, ``assets.lance``,
``rejections.lance``, ``parts.lance`` and ``probes.lance``. Every table has one non-null string primary key, marked with
Lance's ``lance-schema:unenforced-primary-key`` field metadata:

- ``samples``: ``sample_id`` (= ``sample_key(sha256, clip, config_hash)``);
- ``assets``: ``row_key`` = :func:`asset_key` (asset sha256, config hash);
- ``rejections``: ``row_key`` = :func:`rejection_key` (sha256, file identifier, clip, config hash, stage);
- ``parts``: ``decision_id`` (= ``part_decision_key(sha256, clip, part rules hash, code version)``): the
  part decision of a clip, one row for every render configuration of it. Each sample carries its
  decision (its ``part_map``) and names it in ``part_decision_id``; :meth:`DatasetStore.write_samples`
  records it here, and a worker reads it back (:meth:`DatasetStore.part_decisions`) instead of deciding again;
- ``probes``: ``probe_key`` = :func:`probe_key` (sha256, probe code version): what Blender found in an
  asset, reused by every render configuration (:meth:`DatasetStore.stored_probe`).

A table written by older code that lacks columns this code added (nullable, at the end) gains them
when the store is opened; its rows read null there.

Writes are "insert if not exists" (the first write of a key wins): keys already in the table or
repeated within the batch are dropped, the rest go through one ``merge_insert`` on the key, so a
batch is one atomic commit (one new version) or nothing. With the primary key set, Lance detects two
committers inserting the same new key and retries the loser against the new version, so even
concurrent writers add no duplicate (see docs/storage.md); the design still has one committer per
table, the flow's driver.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TypeVar

import lance
import lance.fragment
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from pipelines.build.framepack import grid_shape
from pipelines.build.hexkeys import hex_key16, isin_sorted
from schemas.assets import ProbeReport, Rejection, RejectReason
from schemas.errors import ReasonError
from schemas.parts import PartDecision, part_decision_key
from schemas.render import RenderSpec
from schemas.samples import Sample, sample_key
from schemas.tables import (
    ASSETS_SCHEMA,
    BLOB_METADATA,
    PARTS_SCHEMA,
    PROBES_SCHEMA,
    REJECTIONS_SCHEMA,
    SAMPLES_SCHEMA,
    AssetRow,
    ProbeRow,
    from_table,
    to_row,
)

TableName = Literal["samples", "assets", "rejections", "parts", "probes"]
TABLES: tuple[TableName, ...] = ("samples", "assets", "rejections", "parts", "probes")
PRIMARY_KEY_METADATA = {b"lance-schema:unenforced-primary-key": b"true"}
BLOB_COLUMNS = tuple(f.name for f in SAMPLES_SCHEMA if f.metadata == BLOB_METADATA)

# Reasons that say nothing about the asset itself: a refresh tries those assets again by default.
TRANSIENT_REASONS = frozenset(
    {RejectReason.download_failed, RejectReason.timeout, RejectReason.crashed, RejectReason.write_failed}
)

# Rows converted to Arrow at a time while streaming a write: bounds the memory a write holds.
WRITE_CHUNK_ROWS = 16
# Keys of small rows looked up in the table at a time by an insert-if-new write.
LOOKUP_CHUNK_ROWS = 1024
# Upkeep at the end of a build (``DatasetStore.compact``): compact past this many fragments, keep
# versions this long (Lance's own default) for readers pinned to one.
MAX_FRAGMENTS = 32
VERSION_RETENTION = timedelta(days=7)
# Rows a compacted fragment holds: a samples row is megabytes (64 x 24 x 24 frames at 576 px is a few
# GB a fragment); the other tables' rows are small, and one fragment holds them all.
ROWS_PER_FRAGMENT: dict[str, int] = {"samples": 64}
DEFAULT_ROWS_PER_FRAGMENT = 1 << 20
# Rows of one merge_insert commit of a large write (Lance holds a merge's source in memory).
MERGE_CHUNK_ROWS = 50_000

R = TypeVar("R", bound=BaseModel)


class StoreError(ReasonError, ValueError):
    """A write or read the store refuses; ``reason`` is a stable code, nothing was committed."""


@dataclass(frozen=True)
class StagedSamples:
    """One asset's new samples, written by a worker as a fragment of the ``samples`` table and not yet
    committed: what travels to the committer instead of the rendered bytes (about 1 KB).

    ``sample_ids`` are the rows in ``fragments``; ``present_ids`` the asset's samples the worker found
    already committed (and so did not render again).
    """

    sha256: str
    sample_ids: tuple[str, ...]
    fragments: tuple[lance.fragment.FragmentMetadata, ...]
    part_decisions: tuple[PartDecision, ...]
    present_ids: tuple[str, ...] = ()

    @property
    def n_samples(self) -> int:
        return len(self.sample_ids) + len(self.present_ids)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def asset_key(sha256: str, config_hash: str) -> str:
    """Primary key of an ``assets`` row."""
    return _digest(sha256, config_hash)


def probe_key(sha256: str, probe_version: str) -> str:
    """Primary key of a ``probes`` row: the asset's bytes and the probe code, not the render configuration."""
    return _digest(sha256, probe_version)


def rejection_key(sha256: str, file_identifier: str, clip: str, config_hash: str, stage: str) -> str:
    """Primary key of a ``rejections`` row.

    The file identifier is part of it: two copies of the same bytes (a duplicate, a second mirror
    that failed to download) each keep their own answer to "why was this left out".
    """
    return _digest(sha256, file_identifier, clip, config_hash, stage)


_REJECTION_KEY_PARTS = ("sha256", "file_identifier", "clip", "config_hash", "stage")  # rejection_key's order


def _take_rows(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches from ``batches`` until about ``rows`` rows (whole batches) have been taken."""
    taken = 0
    while taken < rows and (batch := next(batches, None)) is not None:
        taken += batch.num_rows
        yield batch


def _with_primary_key(schema: pa.Schema, key: str) -> pa.Schema:
    if key in schema.names:
        index = schema.get_field_index(key)
        return schema.set(index, schema.field(key).with_metadata(PRIMARY_KEY_METADATA))
    return schema.insert(0, pa.field(key, pa.string(), nullable=False, metadata=PRIMARY_KEY_METADATA))


KEY_COLUMN: dict[TableName, str] = {
    "samples": "sample_id", "assets": "row_key", "rejections": "row_key", "parts": "decision_id", "probes": "probe_key"
}
TABLE_SCHEMAS: dict[TableName, pa.Schema] = {
    "samples": _with_primary_key(SAMPLES_SCHEMA, "sample_id"),
    "assets": _with_primary_key(ASSETS_SCHEMA, "row_key"),
    "rejections": _with_primary_key(REJECTIONS_SCHEMA, "row_key"),
    "parts": _with_primary_key(PARTS_SCHEMA, "decision_id"),
    "probes": _with_primary_key(PROBES_SCHEMA, "probe_key"),
}


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def part_decision_of(sample: Sample) -> PartDecision:
    """The part decision a sample was rendered with, as its ``parts`` row. Raises :class:`StoreError`
    when the sample's ``part_decision_id`` is not the key its own fields give (a bug upstream)."""
    try:
        rules_hash = RenderSpec.model_validate_json(sample.render_config).part_rules_hash()
    except ValueError as exc:
        raise StoreError("bad_render_config", f"{sample.sample_id}: render_config is not a RenderSpec: {exc}") from exc
    expected = part_decision_key(sample.sha256, sample.clip, rules_hash, sample.code_version)
    if sample.part_decision_id != expected:
        raise StoreError(
            "bad_part_decision_id", f"{sample.sample_id}: part_decision_id {sample.part_decision_id} is not {expected}"
        )
    return PartDecision(
        decision_id=expected,
        sha256=sample.sha256,
        clip=sample.clip,
        rules_hash=rules_hash,
        code_version=sample.code_version,
        part_map=sample.part_map,
        created_at=sample.created_at,
    )


def check_sample(sample: Sample) -> Sample:
    """Refuse a sample whose keys or payloads contradict its own fields (a bug upstream)."""
    expected = sample_key(sample.sha256, sample.clip, sample.config_hash)
    if sample.sample_id != expected:
        raise StoreError("bad_sample_id", f"{sample.sample_id} is not sample_key(...) = {expected}")
    part_decision_of(sample)
    if len(sample.cameras) != sample.n_views:
        raise StoreError("bad_grid", f"{sample.sample_id}: {len(sample.cameras)} cameras for {sample.n_views} views")
    for column in BLOB_COLUMNS:
        try:
            shape = grid_shape(getattr(sample, column))
        except (zipfile.BadZipFile, ValueError) as exc:
            raise StoreError("bad_frame_pack", f"{sample.sample_id}.{column}: {exc}") from exc
        if shape != (sample.n_views, sample.n_frames):
            raise StoreError(
                "bad_frame_pack",
                f"{sample.sample_id}.{column} holds {shape[0]}x{shape[1]} views x frames, "
                f"the row says {sample.n_views}x{sample.n_frames}",
            )
    return sample


def absolute_uri(uri: str) -> str:
    """``uri`` with a local path made absolute (a Ray worker may run in another directory); URIs
    with a scheme (``s3://...``) are returned as they are."""
    return uri if "://" in uri else str(Path(uri).resolve())


def table_uri(uri: str, table: TableName) -> str:
    return f"{uri.rstrip('/')}/{table}.lance"


# Credentials Lance may be given (environment or ``storage_options``): kept out of every error text.
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
CREDENTIAL_OPTION_WORDS = ("key", "secret", "token")


def _without_credentials(text: str, storage_options: dict[str, str] | None) -> str:
    options = storage_options or {}
    credentials = [os.environ.get(name, "") for name in CREDENTIAL_VARIABLES] + [
        value for name, value in options.items() if any(word in name.lower() for word in CREDENTIAL_OPTION_WORDS)
    ]
    for credential in filter(None, credentials):
        text = text.replace(credential, "***")
    return text


def _object_store_failure(path: str, exc: Exception, storage_options: dict[str, str] | None) -> StoreError | None:
    """``exc`` as a :class:`StoreError` saying what to check when it is S3 failing (Lance says "Generic
    S3 error: ..."), None when it is anything else. Lance raises the same ValueError for a missing table
    as for a missing bucket or an unreachable endpoint: only its text tells them apart."""
    text = str(exc)
    if "Generic S3 error" not in text:
        return None
    if "NoSuchBucket" in text:
        reason, advice = "bucket_not_found", "the bucket does not exist: create it, or check the URI and the endpoint"
    elif "error sending request" in text or "builder error" in text:  # refused/unresolved; http:// not allowed
        reason, advice = "storage_unreachable", (
            "cannot reach the object store: check the endpoint (AWS_ENDPOINT_URL, or aws_endpoint in "
            "storage_options), that it is up, and AWS_ALLOW_HTTP=true for an http:// endpoint"
        )
    else:
        reason, advice = "storage_error", (
            "the object store refused the request: check the credentials (AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or an instance role), the region and the bucket's permissions"
        )
    return StoreError(reason, f"{path}: {advice}. Lance said: {_without_credentials(text, storage_options)}")


def open_table(
    uri: str, table: TableName, version: int | None = None, storage_options: dict[str, str] | None = None
) -> lance.LanceDataset:
    """A read-only handle on one table of the store at ``uri``, at ``version`` (the latest when None)."""
    path = table_uri(uri, table)
    try:
        return lance.dataset(path, version=version, storage_options=storage_options)
    except ValueError as exc:
        if (failure := _object_store_failure(path, exc, storage_options)) is not None:
            raise failure from None  # not chained: Lance's own text is in the message, credentials removed
        missing = "no such table" if version is None else f"no version {version}"
        raise StoreError("version_not_found", f"{path}: {missing} ({exc})") from exc


def tag_pinned(dataset: lance.LanceDataset) -> str:
    """Tag the version ``dataset`` is at (``pinned-v<N>``) so that no clean-up deletes it: what a
    training run does to the version it reads. Two runs may pin the same version; returns the tag."""
    name = f"pinned-v{dataset.version}"
    if name not in dataset.tags.list():
        try:
            dataset.tags.create(name, dataset.version)
        except ValueError as exc:
            if "already exists" not in str(exc):
                raise
    return name


class DatasetStore:
    """The three tables of one dataset, under ``uri``. Opening a store creates missing empty tables."""

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options
        for name in TABLES:
            self._create_if_missing(name)

    # -- paths and handles -------------------------------------------------------------------

    def checkout(self, version: int | None = None, table: TableName = "samples") -> lance.LanceDataset:
        """A read-only handle on ``table`` at ``version`` (the latest when None)."""
        return open_table(self.uri, table, version, self.storage_options)

    def version(self, table: TableName = "samples") -> int:
        return self.checkout(None, table).version

    def _create_if_missing(self, table: TableName) -> None:
        path = table_uri(self.uri, table)
        try:
            existing = self.checkout(None, table)
        except StoreError as exc:
            if exc.reason != "version_not_found":
                raise
            self._create(table)
            return
        expected, found = TABLE_SCHEMAS[table].names, existing.schema.names
        if expected == found:
            return
        added = [f for f in TABLE_SCHEMAS[table] if f.name not in found]
        if found != expected[: len(found)] or not all(f.nullable for f in added):
            raise StoreError("schema_mismatch", f"{path} has columns {found}, this code writes {expected}")
        # Schema evolution: columns this code added at the end, nullable, so rows from before read null.
        # A metadata-only commit; another process may have made the same one first.
        try:
            existing.add_columns(added)
        except (OSError, ValueError):
            if self.checkout(None, table).schema.names != expected:
                raise

    def _create(self, table: TableName) -> None:
        """Create ``table`` empty; another process creating it at the same moment is fine."""
        path = table_uri(self.uri, table)
        try:
            empty = TABLE_SCHEMAS[table].empty_table()
            lance.write_dataset(empty, path, mode="create", storage_options=self.storage_options)
        except OSError as exc:
            # Lost to another creator: Lance says "already exists" when it saw the table before writing,
            # "Retryable commit conflict" when it lost the commit itself (seen on S3 with six creators).
            # Either way the table is there now; otherwise the create failed.
            try:
                self.checkout(None, table)
            except StoreError:
                raise _object_store_failure(path, exc, self.storage_options) or exc from None

    # -- writes ------------------------------------------------------------------------------

    def write_samples(self, samples: Iterable[Sample]) -> int:
        """Insert the samples whose ``sample_id`` is new, in one commit; returns the rows added.

        ``samples`` is streamed (a generator reading a shard from staging never holds it all). Then the
        part decision of every sample in the batch goes into ``parts`` (a second commit, insert-if-new:
        a write killed between the two leaves the decision to be recorded by the rerun, and until then
        a worker simply decides it again, with the same result).
        """
        decisions: dict[str, PartDecision] = {}

        def checked() -> Iterator[Sample]:
            for sample in samples:
                check_sample(sample)
                if sample.part_decision_id not in decisions:  # small rows: the payloads are not kept
                    decisions[sample.part_decision_id] = part_decision_of(sample)
                yield sample

        added = self._insert_new("samples", checked(), lambda s: s.sample_id)
        self.write_part_decisions(decisions.values())
        return added

    def stage_samples(self, sha256: str, samples: Sequence[Sample], present_ids: Sequence[str] = ()) -> StagedSamples:
        """Write the asset ``sha256``'s ``samples`` as fragment files of the ``samples`` table without committing
        them (a worker's half of a write; :meth:`commit_staged` is the committer's). Nothing is visible
        to readers until the commit; files of a stage never committed (a killed build) are unreferenced
        and go with ``compact``'s clean-up of old versions."""
        if not samples:
            return StagedSamples(sha256, (), (), (), tuple(present_ids))
        for sample in samples:
            if check_sample(sample).sha256 != sha256:
                raise StoreError("bad_stage", f"{sample.sample_id} is a sample of {sample.sha256}, not of {sha256}")
        schema = TABLE_SCHEMAS["samples"]
        dataset = self.checkout(None, "samples")

        def batches() -> Iterator[pa.RecordBatch]:  # converted a few rows at a time: payloads are large
            for start in range(0, len(samples), WRITE_CHUNK_ROWS):
                chunk = samples[start : start + WRITE_CHUNK_ROWS]
                yield pa.RecordBatch.from_pylist([{**to_row(s), "sample_id": s.sample_id} for s in chunk], schema=schema)

        fragments = lance.fragment.write_fragments(
            pa.RecordBatchReader.from_batches(schema, batches()),
            table_uri(self.uri, "samples"),
            schema=schema,
            data_storage_version=dataset.data_storage_version,
            storage_options=self.storage_options,
        )
        decisions = {s.part_decision_id: part_decision_of(s) for s in samples}
        return StagedSamples(
            sha256, tuple(s.sample_id for s in samples), tuple(fragments), tuple(decisions.values()),
            tuple(present_ids),
        )

    def commit_staged(self, staged: Iterable[StagedSamples]) -> tuple[int, set[str]]:
        """Commit workers' staged samples in one version; returns (rows added, the sha256s whose staged
        samples are all in the table now).

        Insert-if-new by key, without reading a payload: a stage whose rows are all in the table
        already (a rerun of a shard whose samples committed before the build was killed) is dropped and
        counts as complete; one with only some of its rows in (two builds racing on one table) is
        dropped and does not count, so the asset is done again, and then renders only what is missing.
        """
        staged = list(staged)
        present = self.present_keys("samples", [key for stage in staged for key in (*stage.sample_ids, *stage.present_ids)])
        appended = [s for s in staged if s.fragments and not present.intersection(s.sample_ids)]
        complete = {
            s.sha256 for s in staged
            if s in appended or present.issuperset(s.sample_ids) and present.issuperset(s.present_ids)
        }
        if appended:
            dataset = self.checkout(None, "samples")
            lance.LanceDataset.commit(
                table_uri(self.uri, "samples"),
                lance.LanceOperation.Append([f for s in appended for f in s.fragments]),
                read_version=dataset.version,
                storage_options=self.storage_options,
            )
        self.write_part_decisions(d for s in staged if s.sha256 in complete for d in s.part_decisions)
        return sum(len(s.sample_ids) for s in appended), complete

    def commit_shard(
        self, staged: Sequence[StagedSamples], rejections: Iterable[Rejection], probes: Iterable[ProbeRow],
        assets: Iterable[AssetRow],
    ) -> tuple[int, int, int, list[str]]:
        """A build's shard, in the order that makes a kill between commits safe: the staged samples
        (one version), the rejections, the probes, and last the ``assets`` rows (the marker of
        finished work) of the assets whose samples are all in. Returns (samples, rejections, assets
        added, the ids of the samples added). Then fragments are merged (:meth:`compact_fragments`):
        every shard adds one samples fragment per asset, and a key lookup opens each."""
        samples_added, complete = self.commit_staged(staged)
        rejections_added = self.write_rejections(rejections)
        self.write_probes(probes)
        staged_sha256 = {s.sha256 for s in staged}
        assets_added = self.write_assets(a for a in assets if a.asset.sha256 in complete or a.asset.sha256 not in staged_sha256)
        added_ids = [i for s in staged if s.sha256 in complete and s.fragments for i in s.sample_ids]
        self.compact_fragments()
        return samples_added, rejections_added, assets_added, added_ids

    def present_keys(self, table: TableName, keys: Sequence[str], chunk: int = LOOKUP_CHUNK_ROWS) -> set[str]:
        """The ones of ``keys`` already in ``table`` (a filtered scan of the key column only)."""
        column, found = KEY_COLUMN[table], set()
        if not keys:
            return found
        for start in range(0, len(keys), chunk):
            where = f"{column} IN ({', '.join(map(sql_literal, keys[start : start + chunk]))})"
            found.update(self.read(table, columns=[column], filter=where).column(column).to_pylist())
        return found

    def write_part_decisions(self, rows: Iterable[PartDecision]) -> int:
        return self._insert_new("parts", rows, lambda r: r.decision_id)

    def write_assets(self, rows: Iterable[AssetRow]) -> int:
        return self._insert_new("assets", rows, lambda r: asset_key(r.asset.sha256, r.config_hash))

    def write_probes(self, rows: Iterable[ProbeRow]) -> int:
        return self._insert_new("probes", rows, lambda r: probe_key(r.sha256, r.probe_version))

    def write_rejections(self, rows: Iterable[Rejection]) -> int:
        return self._insert_new("rejections", rows, lambda r: rejection_key(r.sha256, r.file_identifier, r.clip, r.config_hash, r.stage))

    def write_rejection_batches(self, batches: Iterable[pa.RecordBatch], stage: str, config_hash: str) -> int:
        """Insert the rows of ``batches`` (REJECTIONS_SCHEMA, every row of ``stage`` and ``config_hash``)
        whose key is new (no commit when nothing is new); returns the rows added.

        Built for millions of rows (the prefilter's): the keys already stored for this stage and config
        are held as 16-byte values (16 MB per million), new rows are spooled to a local Arrow file, not
        held, and the first row of each key is kept; they go in one commit per ``MERGE_CHUNK_ROWS``.
        A row stored once is never written again.
        """
        key_column = KEY_COLUMN["rejections"]
        scope = f"stage = {sql_literal(stage)} AND config_hash = {sql_literal(config_hash)}"
        stored_batches = self.checkout(None, "rejections").to_batches(
            columns=[key_column], filter=scope, batch_readahead=1, fragment_readahead=1
        )  # converted batch by batch: the keys are never held as strings
        stored = np.sort(np.concatenate([hex_key16(b.column(0)) for b in stored_batches] or [np.zeros(0, "S16")]))
        schema = TABLE_SCHEMAS["rejections"]
        with tempfile.TemporaryDirectory(prefix="kp20k-rejections-") as spool:
            path = Path(spool) / "new.arrow"
            new_keys = []
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    if pc.any(pc.or_(pc.not_equal(batch.column("stage"), stage), pc.not_equal(batch.column("config_hash"), config_hash))).as_py():
                        raise StoreError("bad_rejection_batch", f"rows of another stage or config than {stage}/{config_hash}")
                    keys = pa.array(
                        [rejection_key(*parts) for parts in zip(*(batch.column(c).to_pylist() for c in _REJECTION_KEY_PARTS))],
                        pa.string(),
                    )
                    fresh = ~isin_sorted(hex_key16(keys), stored)
                    if fresh.any():
                        batch = batch.append_column(key_column, keys).filter(pa.array(fresh))
                        writer.write_batch(batch.select(schema.names).cast(schema))
                        new_keys.append(hex_key16(batch.column(key_column)))
            if not new_keys:
                return 0
            _, first = np.unique(np.concatenate(new_keys), return_index=True)
            keep = np.zeros(sum(len(k) for k in new_keys), dtype=bool)
            keep[first] = True
            del new_keys, first

            def kept() -> Iterator[pa.RecordBatch]:
                at = 0
                with pa.OSFile(str(path), "rb") as spooled:  # read, not memory-mapped: RSS stays bounded
                    for batch in pa.ipc.open_stream(spooled):
                        yield batch.filter(pa.array(keep[at : at + batch.num_rows]))
                        at += batch.num_rows

            # One commit per MERGE_CHUNK_ROWS: a merge_insert holds its source in memory.
            added, rows = 0, kept()
            while chunk := list(_take_rows(rows, MERGE_CHUNK_ROWS)):
                reader = pa.RecordBatchReader.from_batches(schema, iter(chunk))
                stats = self.checkout(None, "rejections").merge_insert(key_column).when_not_matched_insert_all().execute(reader)
                added += int(stats["num_inserted_rows"])
        return added

    def _insert_new(self, table: TableName, records: Iterable[R], key_of: Callable[[R], str]) -> int:
        dataset = self.checkout(None, table)
        key_column = KEY_COLUMN[table]
        schema = TABLE_SCHEMAS[table]
        # Keys are looked up a chunk of records at a time (a filtered scan of the key column), never
        # loaded whole: a shard's write costs the same on a table of millions of rows.
        lookup_rows = WRITE_CHUNK_ROWS if table == "samples" else LOOKUP_CHUNK_ROWS  # samples carry payloads
        failure: list[BaseException] = []

        def new_rows() -> Iterator[dict[str, Any]]:
            seen: set[str] = set()  # this write's keys: the first record of a key wins
            records_left = iter(records)
            while chunk := list(itertools.islice(records_left, lookup_rows)):
                keyed = [(key_of(record), record) for record in chunk]
                present = self.present_keys(table, [key for key, _ in keyed if key not in seen])
                for key, record in keyed:
                    if key not in seen and key not in present:
                        seen.add(key)
                        yield {**to_row(record), key_column: key}

        def batches() -> Iterator[pa.RecordBatch]:
            rows = new_rows()
            try:
                while chunk := list(itertools.islice(rows, WRITE_CHUNK_ROWS)):
                    yield pa.RecordBatch.from_pylist(chunk, schema=schema)
            except BaseException as exc:  # Lance wraps it in an OSError; re-raised as is below
                failure.append(exc)
                raise

        stream = batches()
        first = next(stream, None)
        if first is None:
            return 0  # nothing new: no empty commit, no new version
        reader = pa.RecordBatchReader.from_batches(schema, itertools.chain([first], stream))
        try:
            stats = dataset.merge_insert(key_column).when_not_matched_insert_all().execute(reader)
        except OSError:
            if failure:
                raise failure[0] from None
            raise
        return int(stats["num_inserted_rows"])

    # -- upkeep ------------------------------------------------------------------------------

    def compact(
        self,
        max_fragments: int = MAX_FRAGMENTS,
        keep_versions_for: timedelta = VERSION_RETENTION,
        since: Mapping[str, int] | None = None,
    ) -> dict[str, tuple[int, int]]:
        """Keep every table's fragments and versions bounded; returns table -> (fragments, versions).

        :meth:`compact_fragments`, then versions older than ``keep_versions_for`` are deleted, never
        the latest: a reader pinned to a version (training records the one it read) keeps it for
        that long. ``since`` (table -> the version a build started from) also deletes the versions
        that build made on the way, between that one and the latest, whatever their age: a build
        leaves one version, not one per shard. Tagged versions are never deleted (a training run
        tags the version it pins: :func:`tag_pinned`). A table with nothing to do gets no commit.
        """
        self.compact_fragments(max_fragments)
        counts = {}
        for table in TABLES:
            dataset = self.checkout(None, table)
            dataset.cleanup_old_versions(older_than=keep_versions_for)
            if since is not None and table in since:
                passed = [v["version"] for v in dataset.versions() if since[table] < v["version"] < dataset.version]
                if passed:
                    dataset.cleanup_old_versions(versions=passed, error_if_tagged_old_versions=False)
            dataset = self.checkout(None, table)
            counts[table] = (len(dataset.get_fragments()), len(dataset.versions()))
        return counts

    def compact_fragments(self, max_fragments: int = MAX_FRAGMENTS) -> list[TableName]:
        """Compact each table with more than ``max_fragments`` fragments under its target size
        (``ROWS_PER_FRAGMENT``): one new version, the same rows. Fragments already full are left as
        they are, so a sample's bytes are rewritten about once, not at every build. Returns the
        tables compacted (what a build does between shards: key lookups open every fragment)."""
        compacted = []
        for table in TABLES:
            dataset = self.checkout(None, table)
            target = ROWS_PER_FRAGMENT.get(table, DEFAULT_ROWS_PER_FRAGMENT)
            if sum(f.metadata.physical_rows < target for f in dataset.get_fragments()) > max_fragments:
                dataset.optimize.compact_files(target_rows_per_fragment=target)
                compacted.append(table)
        return compacted

    # -- reads -------------------------------------------------------------------------------

    def read(
        self,
        table: TableName,
        version: int | None = None,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        """Rows of ``table`` at ``version`` (the first ``limit``, in table order); blob columns come
        back as bytes (name only the columns you need on a large table, or read payloads lazily with
        :meth:`take_blobs`)."""
        dataset = self.checkout(version, table)
        return dataset.to_table(
            columns=list(columns) if columns is not None else None, filter=filter, limit=limit, blob_handling="all_binary"
        )

    def read_samples(
        self, version: int | None = None, columns: Sequence[str] | None = None, filter: str | None = None
    ) -> pa.Table:
        return self.read("samples", version, columns, filter)

    def existing_sample_ids(self, config_hash: str | None = None, version: int | None = None) -> set[str]:
        where = None if config_hash is None else f"config_hash = {sql_literal(config_hash)}"
        return set(self.read_samples(version, ["sample_id"], where).column("sample_id").to_pylist())

    def decided_assets(
        self, config_hash: str, retry: Iterable[RejectReason] = TRANSIENT_REASONS, filter_rules_hash: str | None = None
    ) -> dict[str, Literal["sample", "rejected"]]:
        """sha256 -> what a build with ``config_hash`` already decided, so a refresh skips it.

        An asset with a sample under this config is ``"sample"``; otherwise one with a rejection under
        this config, or a config-independent one (``config_hash == ""``, e.g. prefilter or probe), is
        ``"rejected"``, except rejections whose reason is in ``retry`` (transient ones by default) and,
        given ``filter_rules_hash``, filter rejections made under other filter rules (rows from before
        filter rules were recorded count as made under these).
        """
        where = f"config_hash = {sql_literal(config_hash)}"
        if filter_rules_hash is not None:
            where += f" AND NOT (stage = 'filter' AND rules_hash IS NOT NULL AND rules_hash != {sql_literal(filter_rules_hash)})"
        rejected = self.read(
            "rejections", columns=["sha256", "reason"], filter=f"({where}) OR config_hash = ''"
        ).to_pylist()
        retry_codes = {RejectReason(r).value for r in retry}
        decided: dict[str, Literal["sample", "rejected"]] = {
            row["sha256"]: "rejected" for row in rejected if row["reason"] not in retry_codes
        }
        where = f"config_hash = {sql_literal(config_hash)}"
        for sha in self.read_samples(columns=["sha256"], filter=where).column("sha256").to_pylist():
            decided[sha] = "sample"
        return decided

    def finished_assets(
        self, config_hash: str, driver_stages: Iterable[str], filter_rules_hash: str | None = None
    ) -> set[str]:
        """The resume rule: sha256s a build with ``config_hash`` (and, given, ``filter_rules_hash``)
        need not touch again.

        The decisions (a sample, or a non-transient rejection) minus the assets a worker started to
        commit whose ``assets`` row, written last in a shard, is missing: a kill between a shard's
        commits leaves those, and they are done again. Rejections from ``driver_stages`` (decided by the
        driver, not written by a worker) need no marker.
        """
        where = f"config_hash = {sql_literal(config_hash)}"
        marked = {a["sha256"] for a in self.read("assets", columns=["asset"], filter=where).column("asset").to_pylist()}
        touched = set(self.read_samples(columns=["sha256"], filter=where).column("sha256").to_pylist())
        stages = ", ".join(sql_literal(s) for s in driver_stages)
        worker_rejections = self.read("rejections", columns=["sha256"], filter=f"{where} AND stage NOT IN ({stages})")
        touched |= set(worker_rejections.column("sha256").to_pylist())
        return set(self.decided_assets(config_hash, filter_rules_hash=filter_rules_hash)) - (touched - marked)

    def stored_probe(self, sha256: str, probe_version: str) -> ProbeReport | None:
        """The probe report of the asset ``sha256`` under this probe code, if one is stored."""
        rows = from_table(ProbeRow, self.read("probes", filter=f"probe_key = {sql_literal(probe_key(sha256, probe_version))}"))
        return rows[0].probe if rows else None

    def part_decisions(self, sha256: str, rules_hash: str, code_version: str) -> dict[str, PartDecision]:
        """clip -> the stored part decision of each clip of the asset ``sha256`` under these part rules
        and this code version (what a worker reuses instead of deciding again)."""
        where = " AND ".join(
            f"{column} = {sql_literal(value)}"
            for column, value in (("sha256", sha256), ("rules_hash", rules_hash), ("code_version", code_version))
        )
        rows = from_table(PartDecision, self.read("parts", filter=where))
        return {row.clip: row for row in rows}

    def take_blobs(self, column: str, sample_ids: Sequence[str], version: int | None = None) -> list[lance.BlobFile]:
        """Lazy file objects over one blob column, in the order of ``sample_ids``: a reader fetches
        only the bytes it reads (``framepack.unpack`` reads just the frames it is asked for)."""
        if column not in BLOB_COLUMNS:
            raise StoreError("not_a_blob_column", f"{column!r} is not one of {BLOB_COLUMNS}")
        wanted = list(sample_ids)
        if not wanted:
            return []
        dataset = self.checkout(version, "samples")
        found = dataset.to_table(
            columns=["sample_id"],
            filter=f"sample_id IN ({', '.join(map(sql_literal, wanted))})",
            with_row_address=True,
        )
        address = dict(zip(found.column("sample_id").to_pylist(), found.column("_rowaddr").to_pylist()))
        missing = [s for s in wanted if s not in address]
        if missing:
            raise StoreError("sample_not_found", f"no samples {missing[:5]} at version {dataset.version}")
        return dataset.take_blobs(column, addresses=[address[s] for s in wanted])
