"""DatasetStore on real Lance tables in tmp dirs: idempotent writes, versions, blobs, crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pytest

from pipelines.build.colour import decode_part_image
from pipelines.build.framepack import pack, unpack
from pipelines.build.store import TABLES, DatasetStore, StoreError, asset_key, table_uri
from tests.synthetic_samples import part_grid, synthetic_sample
from schemas.assets import AssetRef, ProbeReport, RejectReason, Rejection
from schemas.filters import FilterRules
from schemas.parts import PartDecision, PartRules
from schemas.render import RenderSpec
from schemas.samples import Sample
from schemas.tables import AssetRow, from_table

REPO_ROOT = Path(__file__).resolve().parents[3]
SPEC = RenderSpec(n_views=4, n_frames=4, resolution=32)


def sha(i: int) -> str:
    return f"{i:064x}"


def samples(ids: range, spec: RenderSpec = SPEC) -> list[Sample]:
    return [synthetic_sample(sha(i), spec=spec, seed=i % 5) for i in ids]


def row_ids(store: DatasetStore, version: int | None = None) -> Counter[str]:
    return Counter(store.read_samples(version, columns=["sample_id"]).column("sample_id").to_pylist())


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(str(tmp_path / "kp20k"))


def test_round_trip_keeps_every_field(store: DatasetStore) -> None:
    written = samples(range(3))
    assert store.write_samples(written) == 3
    read = {s.sample_id: s for s in from_table(Sample, store.read_samples())}
    assert read == {s.sample_id: s for s in written}


def test_same_batch_twice_leaves_exactly_one_row_per_key(store: DatasetStore) -> None:
    batch = samples(range(5))
    assert store.write_samples(batch) == 5
    version = store.version()
    assert store.write_samples(batch) == 0
    assert store.version() == version, "a write with nothing new must not commit an empty version"
    assert row_ids(store) == Counter({s.sample_id: 1 for s in batch})


def test_duplicates_inside_one_batch_are_written_once(store: DatasetStore) -> None:
    first, second = samples(range(2))
    assert store.write_samples([first, second, first, first]) == 2
    assert row_ids(store) == Counter({first.sample_id: 1, second.sample_id: 1})


def test_interleaved_overlapping_batches_add_exactly_the_new_rows(store: DatasetStore) -> None:
    pool = samples(range(11))
    added = [
        store.write_samples(pool[0:6]),
        store.write_samples(pool[3:9]),
        store.write_samples(pool[8::-1]),
        store.write_samples(pool[7:11] + pool[0:2]),
    ]
    assert added == [6, 3, 0, 2]
    assert row_ids(store) == Counter({s.sample_id: 1 for s in pool})


def test_new_render_config_adds_rows_and_old_version_stays_readable(store: DatasetStore) -> None:
    spec_b = SPEC.model_copy(update={"samples": 16})
    old = samples(range(4))
    store.write_samples(old)
    old_version = store.version()
    new = samples(range(4), spec_b)
    assert store.write_samples(new) == 4, "same assets under a new config are new rows"
    assert store.existing_sample_ids(SPEC.config_hash()) == {s.sample_id for s in old}
    assert store.existing_sample_ids(spec_b.config_hash()) == {s.sample_id for s in new}
    assert row_ids(store, old_version) == Counter({s.sample_id: 1 for s in old})
    assert store.checkout(old_version).count_rows() == 4
    assert store.checkout().count_rows() == 8
    pinned = from_table(Sample, store.read_samples(old_version, filter=f"sample_id = '{old[2].sample_id}'"))
    assert pinned == [old[2]]


def test_unknown_version_is_a_clear_error(store: DatasetStore) -> None:
    with pytest.raises(StoreError) as err:
        store.checkout(99)
    assert err.value.reason == "version_not_found"


def test_take_blobs_gives_lazy_files_in_the_asked_order(store: DatasetStore) -> None:
    written = samples(range(4))
    store.write_samples(written)
    order = [written[3].sample_id, written[0].sample_id]
    blobs = store.take_blobs("parts", order)
    for blob, sample in zip(blobs, (written[3], written[0])):
        with blob:
            cell = unpack(blob, views=[2], frames=[1])
        ids = decode_part_image(cell, np.array(sample.part_map.palette, dtype=np.uint8))
        expected = part_grid(4, 4, 32, 3, seed=int(sample.sha256, 16) % 5)[2:3, 1:2]
        assert np.array_equal(ids, expected)
    with pytest.raises(StoreError) as err:
        store.take_blobs("rgb", ["no-such-sample"])
    assert err.value.reason == "sample_not_found"
    with pytest.raises(StoreError) as err:
        store.take_blobs("clip", order)
    assert err.value.reason == "not_a_blob_column"


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda s: s.model_copy(update={"sample_id": "0" * 32}), "bad_sample_id"),
        (lambda s: s.model_copy(update={"parts": pack(np.zeros((4, 3, 8, 8), np.uint8))}), "bad_frame_pack"),
        (lambda s: s.model_copy(update={"alpha": b"not a zip"}), "bad_frame_pack"),
        (lambda s: s.model_copy(update={"cameras": s.cameras[:2]}), "bad_grid"),
        (lambda s: s.model_copy(update={"part_decision_id": "0" * 32}), "bad_part_decision_id"),
    ],
    ids=["wrong-key", "wrong-grid-pack", "not-a-zip", "missing-cameras", "wrong-part-decision"],
)
def test_bad_sample_is_refused_and_the_whole_batch_is_not_committed(store: DatasetStore, corrupt, reason: str) -> None:
    good = samples(range(40))  # the bad row comes after two full write chunks
    version = store.version()
    with pytest.raises(StoreError) as err:
        store.write_samples([*good, corrupt(synthetic_sample(sha(99), spec=SPEC))])
    assert err.value.reason == reason
    assert store.version() == version
    assert row_ids(store) == Counter()
    assert store.checkout(table="parts").count_rows() == 0


def test_one_part_decision_per_clip_and_rules_whatever_the_grid(store: DatasetStore) -> None:
    """Three render configurations of the same clips share one ``parts`` row per (asset, clip); other
    part rules or another code version make their own."""
    grids = [SPEC, SPEC.model_copy(update={"n_views": 2, "n_frames": 1}), SPEC.model_copy(update={"resolution": 16})]
    for spec in grids:
        assert store.write_samples(samples(range(3), spec)) == 3
    assert store.write_samples(samples(range(2), SPEC.model_copy(update={"parts": PartRules(max_parts=4)}))) == 2
    later = SPEC.model_copy(update={"samples": 2})  # same part rules, later code
    assert store.write_samples([synthetic_sample(sha(0), spec=later, code_version="other")]) == 1
    decisions = from_table(PartDecision, store.read("parts"))
    assert len(decisions) == 3 + 2 + 1 == len({d.decision_id for d in decisions})
    referenced = set(store.read_samples(columns=["part_decision_id"]).column("part_decision_id").to_pylist())
    assert referenced == {d.decision_id for d in decisions}
    found = store.part_decisions(sha(1), SPEC.part_rules_hash(), "test")
    assert list(found) == ["clip"]
    stored_sample = samples(range(1, 2))[0]
    assert found["clip"].part_map == stored_sample.part_map
    assert store.part_decisions(sha(1), SPEC.part_rules_hash(), "other") == {}
    assert store.part_decisions(sha(7), SPEC.part_rules_hash(), "test") == {}


# ---------------------------------------------------------------- staged by workers, committed by the driver


def test_staged_samples_are_invisible_until_committed_and_travel_as_metadata(store: DatasetStore) -> None:
    import pickle

    written = {i: [synthetic_sample(sha(i), clip=c, spec=SPEC, seed=i) for c in ("walk", "run")] for i in range(3)}
    before = store.version()
    staged = [store.stage_samples(sha(i), rows) for i, rows in written.items()]
    assert store.version() == before and not row_ids(store)  # written, not committed
    assert all(len(pickle.dumps(s)) < 16_384 for s in staged)  # what goes back to the driver: no payload
    added, complete = store.commit_staged(staged)
    assert (added, complete, store.version()) == (6, {sha(i) for i in written}, before + 1)  # one version
    read = {s.sample_id: s for s in from_table(Sample, store.read_samples())}
    assert read == {s.sample_id: s for rows in written.values() for s in rows}
    decisions = from_table(PartDecision, store.read("parts"))
    assert {(d.sha256, d.clip) for d in decisions} == {(sha(i), c) for i in written for c in ("walk", "run")}


def test_committing_a_shard_again_adds_nothing_and_counts_it_complete(store: DatasetStore) -> None:
    """A build killed after a shard's samples committed, before its assets rows: the rerun's workers
    stage the same keys again."""
    first = [store.stage_samples(sha(i), samples(range(i, i + 1))) for i in range(3)]
    store.commit_staged(first)
    version = store.version()
    again = [store.stage_samples(sha(i), samples(range(i, i + 1))) for i in range(3)]
    assert store.commit_staged(again) == (0, {sha(i) for i in range(3)})
    assert store.version() == version and row_ids(store) == Counter({s.sample_id: 1 for s in samples(range(3))})


def test_a_stage_that_only_partly_overlaps_the_table_is_dropped_and_not_complete(store: DatasetStore) -> None:
    """Two builds racing on one table: the asset is done again, never half-duplicated."""
    walk, run = (synthetic_sample(sha(5), clip=c, spec=SPEC) for c in ("walk", "run"))
    staged = store.stage_samples(sha(5), [walk, run])
    store.write_samples([walk])  # the other build got there first
    assert store.commit_staged([staged]) == (0, set())
    assert row_ids(store) == Counter({walk.sample_id: 1})


def test_samples_already_present_count_toward_completeness(store: DatasetStore) -> None:
    walk, run = (synthetic_sample(sha(6), clip=c, spec=SPEC) for c in ("walk", "run"))
    store.write_samples([walk])
    staged = store.stage_samples(sha(6), [run], present_ids=[walk.sample_id])
    assert staged.n_samples == 2
    assert store.commit_staged([staged]) == (1, {sha(6)})
    nothing_new = store.stage_samples(sha(7), [], present_ids=["not-in-the-table"])
    assert store.commit_staged([nothing_new]) == (0, set())


def test_a_stage_of_another_assets_samples_is_refused(store: DatasetStore) -> None:
    with pytest.raises(StoreError) as caught:
        store.stage_samples(sha(1), samples(range(2, 3)))
    assert caught.value.reason == "bad_stage"


def asset_row(i: int, config_hash: str = "cfg") -> AssetRow:
    ref = AssetRef(fileIdentifier=f"f{i}", source="local", fileType="glb", sha256=sha(i))
    return AssetRow(asset=ref, probe=ProbeReport(sha256=sha(i), ok=True, n_armatures=1), config_hash=config_hash)


def rejection(i: int, reason: RejectReason, config_hash: str = "", stage: str = "filter", clip: str = "") -> Rejection:
    return Rejection(
        sha256=sha(i),
        file_identifier=f"f{i}",
        source="local",
        stage=stage,
        reason=reason,
        clip=clip,
        config_hash=config_hash,
    )


def test_assets_and_rejections_are_keyed_and_idempotent(store: DatasetStore) -> None:
    assert store.write_assets([asset_row(1), asset_row(2), asset_row(1, "other")]) == 3
    assert store.write_assets([asset_row(2), asset_row(1)]) == 0
    keys = store.read("assets", columns=["row_key"]).column("row_key").to_pylist()
    expected = [asset_key(sha(1), "cfg"), asset_key(sha(2), "cfg"), asset_key(sha(1), "other")]
    assert Counter(keys) == Counter(expected)

    first = [rejection(1, RejectReason.no_armature), rejection(2, RejectReason.static_animation, clip="Walk")]
    assert store.write_rejections(first) == 2
    # created_at differs, the key does not: still no new row
    assert store.write_rejections([rejection(1, RejectReason.no_armature)]) == 0
    assert store.write_rejections([rejection(2, RejectReason.static_animation, clip="Run")]) == 1
    assert store.write_rejections([rejection(1, RejectReason.timeout, stage="probe")]) == 1
    assert store.checkout(table="rejections").count_rows() == 4
    (walk,) = from_table(Rejection, store.read("rejections", filter="clip = 'Walk'"))
    assert walk.reason is RejectReason.static_animation


def test_two_copies_of_the_same_bytes_keep_their_own_rejection(store: DatasetStore) -> None:
    mirror = rejection(1, RejectReason.download_failed, stage="fetch")
    duplicate = mirror.model_copy(update={"file_identifier": "f1-mirror", "reason": RejectReason.duplicate})
    assert store.write_rejections([mirror, duplicate]) == 2
    assert store.write_rejections([duplicate]) == 0
    rows = from_table(Rejection, store.read("rejections"))
    assert {(r.file_identifier, r.reason) for r in rows} == {
        ("f1", RejectReason.download_failed),
        ("f1-mirror", RejectReason.duplicate),
    }


def test_decided_assets_knows_what_a_refresh_can_skip(store: DatasetStore) -> None:
    cfg = SPEC.config_hash()
    store.write_samples(samples(range(2)))  # assets 0, 1 rendered under cfg
    store.write_samples(samples(range(2, 3), SPEC.model_copy(update={"seed": 1})))  # asset 2 under another config
    store.write_rejections(
        [
            rejection(1, RejectReason.static_animation, cfg, clip="Idle"),  # one clip of a rendered asset
            rejection(3, RejectReason.no_armature),  # config-independent
            rejection(4, RejectReason.render_failed, cfg, stage="render"),
            rejection(5, RejectReason.timeout, cfg, stage="probe"),  # transient
            rejection(6, RejectReason.too_few_parts, "another-config", stage="parts"),
        ]
    )
    decided = store.decided_assets(cfg)
    assert decided == {sha(0): "sample", sha(1): "sample", sha(3): "rejected", sha(4): "rejected"}
    assert store.decided_assets(cfg, retry=())[sha(5)] == "rejected"


def test_a_changed_filter_re_decides_only_the_assets_a_filter_rejected(store: DatasetStore) -> None:
    cfg, strict, relaxed = SPEC.config_hash(), FilterRules(max_bones=4), FilterRules(max_bones=50)
    store.write_samples(samples(range(1)))  # asset 0 accepted
    store.write_rejections([
        rejection(1, RejectReason.too_many_bones, cfg).model_copy(update={"rules_hash": strict.rules_hash()}),
        rejection(2, RejectReason.import_error, cfg, stage="probe"),  # no filter decided it
        rejection(3, RejectReason.too_few_parts, cfg, stage="parts"),
        rejection(4, RejectReason.static_animation, cfg),  # a row from before rules were recorded
    ])
    rows = [AssetRow(asset=AssetRef(file_identifier=f"f{i}", source="local", file_type="glb", sha256=sha(i)),
                     probe=ProbeReport(sha256=sha(i), ok=True), config_hash=cfg) for i in range(5)]
    store.write_assets(rows)  # every asset's shard is complete
    unchanged = store.finished_assets(cfg, ("prefilter",), strict.rules_hash())
    changed = store.finished_assets(cfg, ("prefilter",), relaxed.rules_hash())
    assert unchanged == {sha(i) for i in range(5)}
    assert unchanged - changed == {sha(1)}


def test_an_existing_table_keeps_working_when_a_column_is_added(tmp_path: Path) -> None:
    """A rejections table written before ``rules_hash`` existed: opened, it gains the column (old rows
    read null), keeps its rows and versions, and takes rows of the new shape."""
    from pipelines.build.store import TABLE_SCHEMAS, rejection_key

    new_schema = TABLE_SCHEMAS["rejections"]
    old_schema = new_schema.remove(new_schema.get_field_index("rules_hash"))
    old = rejection(1, RejectReason.no_armature)
    row = {**{k: v for k, v in old.model_dump(mode="python").items() if k != "rules_hash"}, "reason": old.reason.value,
           "row_key": rejection_key(old.sha256, old.file_identifier, old.clip, old.config_hash, old.stage)}
    lance.write_dataset(pa.Table.from_pylist([row], schema=old_schema), table_uri(str(tmp_path), "rejections"))

    store = DatasetStore(str(tmp_path))
    assert store.checkout(table="rejections").schema.names == new_schema.names
    assert from_table(Rejection, store.read("rejections")) == [old]  # read back with rules_hash None
    assert store.write_rejections([old]) == 0  # still known by its key
    new = rejection(2, RejectReason.too_many_bones).model_copy(update={"rules_hash": FilterRules().rules_hash()})
    assert store.write_rejections([new]) == 1
    assert {r.sha256: r.rules_hash for r in from_table(Rejection, store.read("rejections"))} == {
        sha(1): None, sha(2): FilterRules().rules_hash()}
    assert store.decided_assets("", filter_rules_hash=FilterRules().rules_hash()) == {sha(1): "rejected", sha(2): "rejected"}
    assert DatasetStore(str(tmp_path)).checkout(table="rejections").schema.names == new_schema.names  # opened again: as is


def test_compaction_and_cleanup_keep_fragments_and_versions_bounded(store: DatasetStore) -> None:
    from datetime import timedelta

    for i in range(7):  # seven commits: seven fragments, eight versions
        store.write_samples(samples(range(i, i + 1)))
    before = row_ids(store)
    untouched = store.version("rejections")
    counts = store.compact(max_fragments=3, keep_versions_for=timedelta(0))
    assert counts["samples"] == (1, 1)  # compacted, and only the latest version is left
    assert row_ids(store) == before and len(before) == 7
    assert store.version("rejections") == untouched  # nothing to compact: no commit
    assert all(fragments <= 3 and versions == 1 for fragments, versions in counts.values())
    for i in range(7, 9):  # below the bound: written, not compacted
        store.write_samples(samples(range(i, i + 1)))
    assert store.compact(max_fragments=3, keep_versions_for=timedelta(0))["samples"] == (3, 1)
    assert len(row_ids(store)) == 9


def test_a_build_leaves_one_version_keeping_what_it_started_from_and_what_was_pinned(store: DatasetStore) -> None:
    """``since``: the versions a build made on the way go, whatever their age; the one it started
    from, the latest and a version a training run pinned (tagged) stay."""
    from pipelines.build.store import open_table, tag_pinned

    store.write_samples(samples(range(0, 1)))
    started_from = {table: store.version(table) for table in TABLES}
    for i in range(1, 6):  # a build's shards: a version each
        store.write_samples(samples(range(i, i + 1)))
        if i == 3:
            pinned = store.version("samples")
            assert tag_pinned(open_table(store.uri, "samples")) == f"pinned-v{pinned}"
            assert tag_pinned(open_table(store.uri, "samples", pinned)) == f"pinned-v{pinned}"  # twice: one tag
    latest = store.version("samples")
    counts = store.compact(since=started_from)  # kept 7 days by age: only ``since`` removes anything
    kept = [v["version"] for v in store.checkout(table="samples").versions()]
    assert [v for v in kept if v > started_from["samples"]] == [pinned, latest]
    assert counts["samples"][1] == len(kept)
    assert store.checkout(pinned).count_rows() == 4 and len(row_ids(store)) == 6  # both still readable
    assert store.version("rejections") == started_from["rejections"]  # nothing made: nothing touched


def test_existing_table_with_other_columns_is_refused(tmp_path: Path) -> None:
    lance.write_dataset(pa.table({"sample_id": ["x"]}), table_uri(str(tmp_path), "samples"))
    with pytest.raises(StoreError) as err:
        DatasetStore(str(tmp_path))
    assert err.value.reason == "schema_mismatch"


WRITER = """
import os, sys, time
from pipelines.build.store import DatasetStore
from tests.synthetic_samples import synthetic_sample
from schemas.render import RenderSpec
uri, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batch = [synthetic_sample(f"{i:064x}", spec=RenderSpec(n_views=4, n_frames=4, resolution=32), seed=i % 5)
         for i in range(first, last)]
store = DatasetStore(uri)
open(sys.argv[4], "w").close()
while not os.path.exists(sys.argv[5]):
    time.sleep(0.001)
print(store.write_samples(batch))
"""


def python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", textwrap.dedent(code), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen) -> None:
    while not path.exists():
        assert process.poll() is None, "the writer died before reaching the write"
        time.sleep(0.05)


def test_two_processes_writing_the_same_new_ids_add_no_duplicate(store: DatasetStore, tmp_path: Path) -> None:
    two_writers_add_no_duplicate(store, tmp_path)


def two_writers_add_no_duplicate(store: DatasetStore, tmp_path: Path) -> None:
    """Two processes insert 30 ids each, 20 in common, at the same moment: 40 rows, each once."""
    go = tmp_path / "go"
    ranges = [(0, 30), (10, 40)]
    writers = [python(WRITER, store.uri, str(a), str(b), str(tmp_path / f"ready{a}"), str(go)) for a, b in ranges]
    for (a, _), writer in zip(ranges, writers):
        wait_for(tmp_path / f"ready{a}", writer)
    go.touch()
    added = [int(w.communicate(timeout=300)[0].strip()) for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    assert sum(added) == 40
    assert row_ids(store) == Counter({s.sample_id: 1 for s in samples(range(40))})


KILLED_WRITER = """
import os, sys, time
from pipelines.build.store import DatasetStore
from tests.synthetic_samples import synthetic_sample
from schemas.render import RenderSpec

def stream():
    for i in range(60):
        if i == 40:  # Lance has taken two chunks and is inside the write
            open(sys.argv[2], "w").close()
            time.sleep(600)
        yield synthetic_sample(f"{i:064x}", spec=RenderSpec(n_views=4, n_frames=4, resolution=32), seed=i % 5)

DatasetStore(sys.argv[1]).write_samples(stream())
"""


def test_sigkill_mid_write_leaves_no_partial_rows_and_rerun_completes_exactly(
    store: DatasetStore, tmp_path: Path
) -> None:
    before = samples(range(50, 55))
    store.write_samples(before)
    version = store.version()
    marker = tmp_path / "inside-write"
    writer = python(KILLED_WRITER, store.uri, str(marker))
    try:
        wait_for(marker, writer)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL

    reopened = DatasetStore(store.uri)
    assert reopened.version() == version
    assert row_ids(reopened) == Counter({s.sample_id: 1 for s in before})

    everything = samples(range(60))
    assert reopened.write_samples(everything) == 55
    assert row_ids(reopened) == Counter({s.sample_id: 1 for s in everything})
    killed_row = reopened.read_samples(filter=f"sample_id = '{everything[41].sample_id}'")
    assert from_table(Sample, killed_row) == [everything[41]]


BIG_RGB_WRITER = """
import sys
from pipelines.build.store import DatasetStore
from tests.pipelines.build.test_store import big_rgb_samples

DatasetStore(sys.argv[1]).write_samples(big_rgb_samples())
"""


def big_rgb_samples() -> list[Sample]:
    """40 samples sharing one incompressible 3 MiB RGB pack: Lance spends a while writing data files."""
    rgb = pack(np.random.default_rng(0).integers(0, 256, (4, 4, 256, 256, 3), dtype=np.uint8))
    return [s.model_copy(update={"rgb": rgb}) for s in samples(range(100, 140))]


def test_sigkill_while_lance_writes_data_files_commits_nothing(tmp_path: Path) -> None:
    before = samples(range(50, 55))
    killed_between_files_and_commit = None
    for attempt in range(3):  # a loaded machine may let the commit win the race: then try again
        store = DatasetStore(str(tmp_path / f"attempt{attempt}"))
        store.write_samples(before)
        version = store.version()
        data = Path(store.uri) / "samples.lance" / "data"
        old_files = set(data.iterdir())
        writer = python(BIG_RGB_WRITER, store.uri)
        try:
            while not set(data.iterdir()) - old_files:
                assert writer.poll() is None, "the writer ended before writing any data file"
                time.sleep(0.002)
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=60)
        reopened = DatasetStore(store.uri)
        if reopened.version() == version:
            killed_between_files_and_commit = reopened
            break
        # the commit landed first: it must hold the whole batch
        assert len(row_ids(reopened)) == len(before) + 40
    assert killed_between_files_and_commit is not None, "never killed between data files and commit"

    store = killed_between_files_and_commit
    assert set(data.iterdir()) - old_files, "the killed write left its uncommitted files"
    assert row_ids(store) == Counter({s.sample_id: 1 for s in before})
    batch = big_rgb_samples()
    assert store.write_samples(batch) == 40
    assert row_ids(store) == Counter({s.sample_id: 1 for s in [*before, *batch]})
    (blob,) = store.take_blobs("rgb", [batch[7].sample_id])
    with blob:
        assert np.array_equal(unpack(blob), unpack(batch[7].rgb))


def test_compaction_merges_small_fragments_and_leaves_full_ones_alone(store: DatasetStore, monkeypatch) -> None:
    """A sample's bytes are rewritten about once: fragments already at the target size stay."""
    import pipelines.build.store as store_module

    monkeypatch.setitem(store_module.ROWS_PER_FRAGMENT, "samples", 2)
    store.commit_staged([store.stage_samples(sha(1), [synthetic_sample(sha(1), clip=c, spec=SPEC) for c in ("a", "b")])])
    (full,) = store.checkout().get_fragments()
    full_files = [f.path for f in full.metadata.files]
    store.commit_staged([store.stage_samples(sha(i), samples(range(i, i + 1))) for i in range(2, 5)])
    assert len(store.checkout().get_fragments()) == 4  # one fragment per stage
    rows = row_ids(store)
    assert store.compact_fragments(max_fragments=0) == ["samples", "parts"]  # parts: two small fragments
    fragments = store.checkout().get_fragments()
    assert [f.path for f in fragments[0].metadata.files] == full_files  # untouched
    assert [f.metadata.physical_rows for f in fragments] == [2, 3]  # the three small ones merged into one
    assert row_ids(store) == rows
