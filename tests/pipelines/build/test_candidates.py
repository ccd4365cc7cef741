"""Streaming discovery + prefilter over annotation parquets in the released layout: the same decisions
as the prefilter over a list, across batch boundaries; ``limit`` stops reading; rejections are
written once per (asset, rules)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.build.candidates import iter_candidates, stage_candidates, stage_todo
from pipelines.build.prefilter import candidate_assets, prefilter, prefilter_stream
from pipelines.build.sources.objaverse_xl import annotation_scan, discover_objaverse
from pipelines.build.store import DatasetStore
from schemas.assets import RejectReason
from schemas.prefilter import PrefilterRules
from tests.netfixtures import annotation_row, write_objaverse_annotations

LICENCES = {"github": ["MIT License", "apache-2.0", None, "GNU - GPL"], "sketchfab": ["by", "by-nc", "cc0", "st"],
            "smithsonian": ["CC0"], "thingiverse": ["Creative Commons - Attribution", "Public Domain", "weird"]}


def annotation_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows of every source with duplicates across sources and batches, bad shas, odd file types."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        source = rng.choice(sorted(LICENCES))
        content = f"bytes-{rng.randrange(n // 3)}".encode()  # about three copies of each
        file_type = rng.choice(["glb", "GLB", ".fbx", "obj", "stl", "gltf", "dae"])
        row = annotation_row(f"https://{source}.example/{rng.randrange(10**6):06d}/{i}", source,
                             rng.choice(LICENCES[source]), file_type, content)
        if i % 41 == 0:
            row["sha256"] = "not-a-sha"
        rows.append(row)
    return rows


def decisions(accepted, rejections) -> tuple[list, list]:
    return ([(a.file_identifier, a.license, a.sha256, a.metadata) for a in accepted],
            sorted((r.file_identifier, r.reason, r.detail) for r in rejections))


def streamed(scan, rules: PrefilterRules, limit: int | None = None) -> tuple[list, list]:
    accepted, rejections = [], []
    for decided in prefilter_stream(scan, rules, limit):
        accepted += candidate_assets(decided.accepted)
        rejections += [(r["file_identifier"], RejectReason(r["reason"]), r["detail"]) for r in decided.rejected.to_pylist()]
    return accepted, rejections


@pytest.mark.parametrize("rules", [PrefilterRules(), PrefilterRules(sources=["github", "thingiverse"], licences=["MIT", "CC0-1.0"])])
def test_streaming_decides_exactly_as_the_list_prefilter_across_batches(tmp_path: Path, rules: PrefilterRules):
    write_objaverse_annotations(tmp_path, annotation_rows(300))
    scan = annotation_scan(tmp_path, offline=True, file_types=rules.file_types, batch_rows=7)
    accepted, rejections = streamed(scan, rules)
    reference = prefilter(discover_objaverse(tmp_path, offline=True, file_types=rules.file_types), rules)
    assert decisions(accepted, []) == decisions(reference[0], [])
    assert sorted(rejections) == decisions([], reference[1])[1]
    reasons = {reason for _, reason, _ in rejections}
    assert {RejectReason.duplicate, RejectReason.bad_annotation, RejectReason.licence_not_allowed} <= reasons
    assert any("duplicate_copies" in a.metadata for a in accepted)  # copies found in other batches and sources


def test_limit_stops_reading_once_enough_are_accepted(tmp_path: Path):
    write_objaverse_annotations(tmp_path, annotation_rows(400, seed=1))
    scan = annotation_scan(tmp_path, offline=True, file_types=PrefilterRules().file_types, batch_rows=5)
    batches_read = []

    def counting():
        batches_read.append(0)
        for batch in scan():
            batches_read[-1] += 1
            yield batch

    everything, _ = streamed(scan, PrefilterRules())
    first, _ = streamed(counting, PrefilterRules(dedupe=False), limit=4)
    assert [a.file_identifier for a in first] == [a.file_identifier for a in streamed(scan, PrefilterRules(dedupe=False))[0][:4]]
    assert 0 < batches_read[0] < sum(1 for _ in scan()) // 4  # without de-duplication, reading itself stopped
    deduped, _ = streamed(scan, PrefilterRules(), limit=4)  # with it, the deciding pass (over the spill) stops
    assert [a.file_identifier for a in deduped] == [a.file_identifier for a in everything[:4]]


def test_the_source_is_read_once_and_its_spill_file_removed(tmp_path: Path):
    write_objaverse_annotations(tmp_path / "objaverse", annotation_rows(60, seed=2))
    scan = annotation_scan(tmp_path / "objaverse", offline=True, batch_rows=8)
    calls = []

    def counted():
        calls.append(1)
        return scan()

    spill = tmp_path / "spill"
    spill.mkdir()
    decided = list(prefilter_stream(counted, PrefilterRules(), spill_dir=str(spill)))
    assert len(calls) == 1 and sum(d.scanned for d in decided) == 60
    assert list(spill.iterdir()) == []


def test_rejections_are_written_once_per_asset_and_rules(tmp_path: Path):
    write_objaverse_annotations(tmp_path / "objaverse", annotation_rows(200, seed=3))
    store = DatasetStore(str(tmp_path / "kp20k.lance"))
    rules = PrefilterRules()
    scan = annotation_scan(tmp_path / "objaverse", offline=True, file_types=rules.file_types, batch_rows=16)

    first = stage_candidates(scan, rules, store, tmp_path / "a.parquet")
    rows = store.read("rejections", columns=["row_key", "file_identifier", "reason", "config_hash"]).to_pylist()
    assert first.rejections_written == first.rejected == len(rows) > 0
    assert len({r["row_key"] for r in rows}) == len(rows) == len({r["file_identifier"] for r in rows})
    assert sum(first.reasons.values()) == first.rejected and first.accepted + first.rejected == first.scanned
    assert len(list(iter_candidates(tmp_path / "a.parquet"))) == first.accepted

    version = store.version("rejections")
    again = stage_candidates(scan, rules, store, tmp_path / "b.parquet")
    assert (again.rejections_written, store.version("rejections")) == (0, version)  # nothing rewritten, no commit
    assert (again.accepted, again.reasons) == (first.accepted, first.reasons)

    relaxed = PrefilterRules(licences=[*rules.licences, "CC-BY-NC-4.0", "LicenseRef-Sketchfab-Standard"])
    third = stage_candidates(scan, relaxed, store, tmp_path / "c.parquet")
    assert third.accepted > first.accepted and third.rejections_written == third.rejected
    stored = store.read("rejections", columns=["config_hash"]).column("config_hash").to_pylist()
    assert stored.count(relaxed.config_hash()) == third.rejected and stored.count(rules.config_hash()) == first.rejected


def test_the_todo_file_skips_finished_assets_and_a_limit_bounds_the_candidates(tmp_path: Path):
    write_objaverse_annotations(tmp_path / "objaverse", annotation_rows(120, seed=4))
    store = DatasetStore(str(tmp_path / "kp20k.lance"))
    scan = annotation_scan(tmp_path / "objaverse", offline=True, batch_rows=9)
    summary = stage_candidates(scan, PrefilterRules(), store, tmp_path / "c.parquet", limit=6)
    candidates = list(iter_candidates(summary.path, batch_rows=4))
    assert summary.accepted == len(candidates) == 6 and summary.scanned < 120
    per_source = stage_todo(summary.path, {candidates[0].sha256, candidates[3].sha256}, tmp_path / "todo.parquet")
    todo = list(iter_candidates(tmp_path / "todo.parquet"))
    assert [a.sha256 for a in todo] == [a.sha256 for i, a in enumerate(candidates) if i not in (0, 3)]
    assert per_source == dict(Counter(a.source for a in todo))


def test_the_rejection_writer_keeps_one_row_per_key_and_refuses_foreign_rows(tmp_path: Path):
    store = DatasetStore(str(tmp_path / "kp20k.lance"))
    rows = annotation_rows(40, seed=5)
    twice = rows + rows  # identical rows: the same keys twice, in separate batches
    batch = next(d.rejected for d in prefilter_stream(lambda: iter([_annotations(twice)]), PrefilterRules()))
    halves = [batch.slice(0, batch.num_rows // 2), batch.slice(batch.num_rows // 2)]
    written = store.write_rejection_batches(iter(halves), "prefilter", PrefilterRules().config_hash())
    keys = store.read("rejections", columns=["row_key"]).column("row_key").to_pylist()
    assert written == len(keys) == len(set(keys)) == len({(r["file_identifier"]) for r in batch.to_pylist()})
    with pytest.raises(ValueError, match="another stage or config"):
        store.write_rejection_batches(iter([batch]), "fetch", PrefilterRules().config_hash())
    assert store.read("rejections", columns=["row_key"]).num_rows == written  # nothing of the refused call


def _annotations(rows: list[dict]) -> pa.RecordBatch:
    from schemas.prefilter import ANNOTATION_SCHEMA

    return pa.RecordBatch.from_pylist([{**r, "local_path": None} for r in rows], schema=ANNOTATION_SCHEMA)
